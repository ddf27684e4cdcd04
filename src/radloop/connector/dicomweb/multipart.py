"""``multipart/related`` (RFC 2387) bodies as DICOMweb uses them (PS3.18 §8.6): read and write.

:class:`MultipartReader` is incremental: feed it the body chunk by chunk as it arrives and it
returns each part once the delimiter after it has been seen, so only one part at a time is held
in memory. :class:`SpoolingMultipartReader` writes each part to a file as it arrives instead
(STOW-RS), so not even one part is held. :func:`write_parts` produces such a body for WADO-RS answers.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from radloop.core.errors import RequestError

CRLF = b"\r\n"
MAX_HEAD_BYTES = 16384  # the headers of one body part
_PARAM_RE = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


class MultipartError(RequestError):
    """A multipart body or its Content-Type is malformed."""


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: ``type/subtype`` (lower case) and its parameters (names lower case)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(value: str) -> MediaType:
    """Parse one media type such as ``multipart/related; type="application/dicom"; boundary=x``."""
    head, _, _rest = value.partition(";")
    params = {m.group(1).lower(): _unquote(m.group(2)) for m in _PARAM_RE.finditer(value[len(head) :])}
    return MediaType(head.strip().lower(), params)


def parse_accept(value: str) -> list[MediaType]:
    """The media types of an Accept header, in order (q-values are ignored: order is preference)."""
    out = []
    for item in _split_top_level(value):
        if item.strip():
            out.append(parse_media_type(item))
    return out


def _split_top_level(value: str) -> list[str]:
    """Split on commas that are not inside quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names lower case) and its content."""

    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> MediaType | None:
        raw = self.headers.get("content-type")
        return parse_media_type(raw) if raw else None


class _StreamParser(ABC):
    """The multipart grammar (RFC 2046 §5.1.1), fed chunk by chunk, with bounded buffering.

    Subclasses receive each part as events: :meth:`_start_part` (its headers), :meth:`_part_data`
    (body bytes, in order) and :meth:`_end_part`. At most a part head (:data:`MAX_HEAD_BYTES`) or
    one chunk plus a delimiter is held in memory, however large a part is.
    """

    def __init__(self, boundary: str) -> None:
        if not 1 <= len(boundary) <= 70:
            raise MultipartError("multipart boundary must be 1-70 characters")
        self._delimiter = CRLF + b"--" + boundary.encode("latin-1")
        self._buffer = bytearray(CRLF)  # the first delimiter may start the body: give it its CRLF
        self._state = "preamble"  # preamble, padding (after a delimiter), head, body, done

    @property
    def done(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._state == "done"

    def _feed(self, chunk: bytes) -> None:
        if self._state == "done":
            return
        self._buffer += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance as far as the buffer allows; False when more data is needed (or at the end)."""
        buf = self._buffer
        if self._state in ("preamble", "body"):
            index = buf.find(self._delimiter)
            if index < 0:
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    if self._state == "body":
                        self._part_data(bytes(buf[:-keep]))
                    del buf[:-keep]
                return False
            if self._state == "body":
                self._part_data(bytes(buf[:index]))
                self._end_part()
            del buf[: index + len(self._delimiter)]
            self._state = "padding"
            return True
        if self._state == "padding":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                del buf[:]
                return False
            line_end = buf.find(CRLF)
            if line_end < 0:
                self._check_head_size()
                return False
            del buf[: line_end + 2]
            self._state = "head"
            return True
        if self._state == "head":
            if len(buf) < 2:
                return False
            if buf[:2] == CRLF:
                del buf[:2]
                self._start_part({})
                self._state = "body"
                return True
            end = buf.find(CRLF + CRLF)
            boundary_at = buf.find(self._delimiter)
            if 0 <= boundary_at < (end if end >= 0 else len(buf)):
                raise MultipartError("a body part has no blank line after its headers")
            if end < 0:
                self._check_head_size()
                return False
            headers = _parse_headers(bytes(buf[:end]))
            del buf[: end + 4]
            self._start_part(headers)
            self._state = "body"
            return True
        return False

    def _check_head_size(self) -> None:
        if len(self._buffer) > MAX_HEAD_BYTES:
            raise MultipartError(f"a body part's headers are longer than {MAX_HEAD_BYTES} bytes")

    def finish(self) -> None:
        """Call at the end of the body: :class:`MultipartError` if the closing delimiter never came."""
        if self._state != "done":
            raise MultipartError("multipart body ended before its closing boundary")

    @abstractmethod
    def _start_part(self, headers: dict[str, str]) -> None:
        """A part begins, with these headers."""

    @abstractmethod
    def _part_data(self, data: bytes) -> None:
        """The next bytes of the current part's body."""

    @abstractmethod
    def _end_part(self) -> None:
        """The current part is complete."""


class MultipartReader(_StreamParser):
    """Incremental reader of a multipart body with a known boundary, parts held in memory."""

    def __init__(self, boundary: str) -> None:
        super().__init__(boundary)
        self._headers: dict[str, str] = {}
        self._content = bytearray()
        self._completed: list[Part] = []

    def feed(self, chunk: bytes) -> list[Part]:
        """Add body bytes; returns the parts completed by them."""
        self._feed(chunk)
        parts, self._completed = self._completed, []
        return parts

    def _start_part(self, headers: dict[str, str]) -> None:
        self._headers, self._content = headers, bytearray()

    def _part_data(self, data: bytes) -> None:
        self._content += data

    def _end_part(self) -> None:
        self._completed.append(Part(self._headers, bytes(self._content)))
        self._content = bytearray()


@dataclass(frozen=True)
class SpooledPart:
    """One body part written to a file: its headers (names lower case) and the file's path.

    The file belongs to whoever took the part from the reader: remove it when done.
    """

    headers: dict[str, str]
    path: Path

    @property
    def content_type(self) -> MediaType | None:
        raw = self.headers.get("content-type")
        return parse_media_type(raw) if raw else None


class SpoolingMultipartReader(_StreamParser):
    """Incremental reader that writes each part's body to a file in ``directory`` as it arrives,
    so a request of any size costs a chunk of memory (STOW-RS: a 300 MB part is not held)."""

    def __init__(self, boundary: str, directory: Path) -> None:
        super().__init__(boundary)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._headers: dict[str, str] = {}
        self._file: BinaryIO | None = None
        self._path = directory
        self._completed: list[SpooledPart] = []

    def feed(self, chunk: bytes) -> list[SpooledPart]:
        """Add body bytes; returns the parts completed by them (their files closed)."""
        self._feed(chunk)
        parts, self._completed = self._completed, []
        return parts

    def _start_part(self, headers: dict[str, str]) -> None:
        self._headers = headers
        fd, name = tempfile.mkstemp(dir=self.directory, prefix="stow-", suffix=".part")
        self._file, self._path = os.fdopen(fd, "wb"), Path(name)

    def _part_data(self, data: bytes) -> None:
        if self._file is not None and data:
            self._file.write(data)

    def _end_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._completed.append(SpooledPart(self._headers, self._path))
            self._file = None

    def close(self) -> None:
        """Remove what this reader still owns: a part being written, parts not taken."""
        if self._file is not None:
            self._file.close()
            self._path.unlink(missing_ok=True)
            self._file = None
        for part in self._completed:
            part.path.unlink(missing_ok=True)
        self._completed = []


def _parse_headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise MultipartError(f"malformed body part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    """A boundary that will not occur in DICOM content by chance."""
    return f"radloop-{secrets.token_hex(16)}"


def write_parts(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """The body of a multipart message from ``(content type, content)`` pairs, part by part."""
    for content_type, content in parts:
        yield b"--" + boundary.encode() + CRLF + f"Content-Type: {content_type}".encode() + CRLF + CRLF
        yield content
        yield CRLF
    yield b"--" + boundary.encode() + b"--" + CRLF
