"""Source image headers read once per worker process: the series → volume step reads every file's
groups 0002-0028 (:mod:`radloop.pipelines.volume`), and the result writers need exactly those
groups of the same files moments later (:mod:`radloop.pipelines.writers`). The reader leaves them
here; the writers take them from here instead of parsing the files again.

Entries are keyed by path *and* file identity (inode, size, modification time), so a file that was
replaced is read afresh; the cache holds at most :data:`MAX_HEADERS` headers, least recently used
dropped first. Holders must treat a header as shared: writers only drop empty sequences from it
(the same edit each of them makes).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from pydicom.dataset import Dataset

MAX_HEADERS = 2048
"""About 60 MB of parsed headers at most; a 2000-slice series still fits whole."""

_Key = tuple[str, int, int, int]
_headers: OrderedDict[_Key, Dataset] = OrderedDict()
_lock = threading.Lock()


def _key(path: Path) -> _Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def remember(path: Path, header: Dataset) -> None:
    """Keep ``header`` (groups 0002-0028 of ``path``, no pixel data) for the writers."""
    key = _key(path)
    if key is None:
        return
    with _lock:
        _headers[key] = header
        _headers.move_to_end(key)
        while len(_headers) > MAX_HEADERS:
            _headers.popitem(last=False)


def recall(path: Path) -> Dataset | None:
    """The header :func:`remember` kept for this very file, or None."""
    key = _key(path)
    if key is None:
        return None
    with _lock:
        header = _headers.get(key)
        if header is not None:
            _headers.move_to_end(key)
        return header
