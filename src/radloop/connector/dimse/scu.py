"""C-STORE SCU: send DICOM files to a peer (``radloop send`` and the ``dicom`` destination).

Transfer syntax negotiation: for each SOP class, each compressed transfer syntax the files use
is proposed in a presentation context of its own, and Explicit/Implicit VR Little Endian in one
more. (Offered together in one context, the peer picks one syntax for all, and most pick
uncompressed.) A file goes as it is -- its own bytes after the File Meta Information, never
decoded -- when the peer accepted its syntax; otherwise it is decoded, decompressed if need be,
and encoded in an accepted uncompressed syntax, keeping its SOP Instance UID: a change of
transfer syntax is the same instance (PS3.5 §10), so a retried or re-routed result never
becomes a second copy.

The wire level is :class:`~radloop.connector.dimse.store_association.StoreAssociation` (blocking
socket, PDUs as large as the peer accepts; why not pynetdicom's ``send_c_store``: see there).
``associations`` > 1 sends over that many parallel associations, fewer where the peer refuses
some.
"""

from __future__ import annotations

import gzip
import io
import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from radloop.connector.dimse.status import is_success_or_warning
from radloop.connector.dimse.store_association import AssociationLost, NoResponse, StoreAssociation
from radloop.core.errors import DeliveryError
from radloop.pipelines.header_reader import read_file_meta_uids

log = logging.getLogger(__name__)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128


@dataclass
class SendReport:
    """Per-file outcome of a send."""

    sent: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class FileHeader:
    """What choosing a presentation context needs, from a file's File Meta Information."""

    sop_class: str
    sop_instance: str
    transfer_syntax: UID
    data_set_offset: int
    """Where the data set starts: the first byte after the File Meta Information."""


def iter_dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Files named by ``paths`` (folders recursively), ``.dcm.gz`` included, hidden files skipped."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def read_dicom(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, gzip-compressed (``.gz``) or not."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return pydicom.dcmread(io.BytesIO(f.read()), stop_before_pixels=stop_before_pixels)
    return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)


def read_header(path: Path) -> FileHeader:
    """SOP Class, SOP Instance and Transfer Syntax UIDs from the File Meta Information (the data
    set's header where the meta lacks the first two). Raises ``InvalidDicomError`` / ``OSError``."""
    with _open(path) as f:
        quick = _quick_file_meta(f)
        if quick is None:  # unusual meta: pydicom's tolerant reader
            f.seek(0)
            parsed = _read_file_meta(f)
            meta = {k: str(parsed.get(k) or "") for k in _META_KEYWORDS.values()}
            offset = f.tell()
        else:
            meta, offset = quick
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        raise InvalidDicomError("no Transfer Syntax UID in its File Meta Information")
    sop_class, sop_instance = meta.get("MediaStorageSOPClassUID"), meta.get("MediaStorageSOPInstanceUID")
    if not sop_class or not sop_instance:
        ds = read_dicom(path, stop_before_pixels=True)
        sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
        if not sop_class or not sop_instance:
            raise InvalidDicomError("no SOP Class UID or SOP Instance UID")
    return FileHeader(str(sop_class), str(sop_instance), UID(str(ts)), offset)


def data_set_bytes(path: Path, header: FileHeader) -> bytes:
    """The file's encoded data set: its bytes after the File Meta Information (read by
    :func:`read_header`; a file changed since is sent as it is now, from the same offset)."""
    with _open(path) as f:
        f.seek(header.data_set_offset)
        return f.read()


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as z:
            return io.BytesIO(z.read())
    return open(path, "rb")  # noqa: SIM115 - returned to a with block


def _read_file_meta(f: BinaryIO) -> Dataset:
    """Reads the preamble and File Meta Information; leaves ``f`` at the data set's first byte."""
    read_preamble(f, False)
    start = f.tell()
    meta = read_dataset(f, is_implicit_VR=False, is_little_endian=True, stop_when=_past_group_0002)
    if f.tell() == start and not len(meta):
        raise InvalidDicomError("no File Meta Information")
    return meta


def _past_group_0002(tag: Any, _vr: Any, _length: Any) -> bool:
    return bool(tag.group != 2)


_META_KEYWORDS = {
    0x0002: "MediaStorageSOPClassUID",
    0x0003: "MediaStorageSOPInstanceUID",
    0x0010: "TransferSyntaxUID",
}
_META_WINDOW = 4096


def _quick_file_meta(f: BinaryIO) -> tuple[dict[str, str], int] | None:
    """The three UIDs of a conformant File Meta Information (preamble, ``DICM``, group 0002 in
    Explicit VR Little Endian, PS3.10 §7.1) and the data set's offset, from the file's first
    4 KiB by the volume reader's element walk, without pydicom (a fifth of the CPU); ``None``
    for anything else."""
    return read_file_meta_uids(f.read(_META_WINDOW), _META_KEYWORDS)


def send_files(
    files: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "RADLOOP",
    *,
    timeout_s: float = 30.0,
    on_progress: Callable[[Path, bool], None] | None = None,
    associations: int = 1,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> SendReport:
    """Send ``files`` over ``associations`` parallel associations (each takes every n-th file);
    per-file failures (an unreadable file, a refusal, a lost association) are reported, not raised.

    Where the peer refuses some of the parallel associations (its limit), their files go over
    one more association after the others. ``tls_args``: (context, server name) for DICOM TLS
    (:func:`radloop.connector.dimse.tls.tls_args`). Raises :class:`DeliveryError` if no association can
    be made at all.
    """
    headers: dict[Path, FileHeader] = {}
    unreadable = SendReport()
    for f in files:
        try:
            headers[f] = read_header(f)
        except (OSError, EOFError, InvalidDicomError, ValueError, KeyError, struct.error) as e:
            unreadable.failed.append((f, f"not a readable DICOM file: {e}"))
            if on_progress is not None:
                on_progress(f, False)
    readable = [f for f in files if f in headers]
    peer = _Peer(host, port, called_ae, calling_ae, timeout_s, tls_args, on_progress)
    report = _send(readable, headers, peer, associations) if readable else SendReport()
    report.failed.extend(unreadable.failed)
    return report


@dataclass(frozen=True)
class _Peer:
    """Where one send goes, and whom it tells about each file."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout_s: float
    tls_args: tuple[ssl.SSLContext, str] | None
    on_progress: Callable[[Path, bool], None] | None


def _send(
    files: Sequence[Path], headers: dict[Path, FileHeader], peer: _Peer, associations: int
) -> SendReport:
    count = max(1, min(associations, len(files)))
    if count == 1:
        return _send_continuing(files, headers, peer)
    lock = threading.Lock()
    on_progress = peer.on_progress

    def progress(path: Path, ok: bool) -> None:
        if on_progress is not None:
            with lock:
                on_progress(path, ok)

    chunks = [list(files[i::count]) for i in range(count)]
    peer = replace(peer, on_progress=progress)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="radloop-send") as pool:
        futures = [pool.submit(_send_continuing, chunk, headers, peer) for chunk in chunks]
    report, refused, refusals, why = SendReport(), [], 0, ""
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            part = future.result()
        except DeliveryError as e:
            refused.extend(chunk)
            refusals += 1
            why = why or str(e)
            continue
        report.sent.extend(part.sent)
        report.failed.extend(part.failed)
    if refused:
        if len(refused) == len(files):
            raise DeliveryError(why)
        log.info("%d of %d parallel associations refused; sending their files over one", refusals, count)
        part = _send_over_one_retrying(refused, headers, peer)
        report.sent.extend(part.sent)
        report.failed.extend(part.failed)
    return report


FALLBACK_TRIES = 5
"""Tries for the one association that carries what refused parallel associations left: the peer
may still count the associations just released against its limit (a transient rejection)."""


def _send_over_one_retrying(
    files: Sequence[Path], headers: dict[Path, FileHeader], peer: _Peer
) -> SendReport:
    for attempt in range(1, FALLBACK_TRIES + 1):
        try:
            return _send_continuing(files, headers, peer)
        except DeliveryError:
            if attempt == FALLBACK_TRIES:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _send_continuing(files: Sequence[Path], headers: dict[Path, FileHeader], peer: _Peer) -> SendReport:
    """``files`` over one association; when the peer aborts it (or the connection breaks), the
    files not yet attempted go over a new one, so that one instance a peer aborts on fails alone
    (every round attempts at least one file, so this ends). Raises :class:`DeliveryError` when
    the first association cannot be established."""
    report, unsent = _send_over_one(files, headers, peer)
    while unsent:
        log.info(
            "association with %s@%s:%d lost; %d file(s) over a new one",
            peer.called_ae,
            peer.host,
            peer.port,
            len(unsent),
        )
        try:
            part, unsent = _send_over_one(unsent, headers, peer)
        except DeliveryError as e:
            report.failed.extend((f, f"association lost, and then {e}") for f in unsent)
            break
        report.sent.extend(part.sent)
        report.failed.extend(part.failed)
    return report


def _send_over_one(
    files: Sequence[Path], headers: dict[Path, FileHeader], peer: _Peer
) -> tuple[SendReport, list[Path]]:
    """The outcome of each file attempted, and the files not attempted because the association
    was lost (none after a timeout: a peer that did not answer in ``timeout_s`` gets no new
    association now, its remaining files fail at once). Raises :class:`DeliveryError` when the
    association cannot be established."""
    contexts = _contexts(headers[f] for f in files)
    assoc = StoreAssociation(
        peer.host,
        peer.port,
        peer.called_ae,
        peer.calling_ae,
        contexts,
        timeout_s=peer.timeout_s,
        tls_args=peer.tls_args,
    )
    report, lost = SendReport(), None
    try:
        for index, f in enumerate(files):
            try:
                ok, why = _send_one(assoc, f, headers[f])
            except AssociationLost as e:
                lost, ok, why = e, False, str(e)
            (report.sent.append(f) if ok else report.failed.append((f, why)))
            if peer.on_progress:
                peer.on_progress(f, ok)
            if isinstance(lost, NoResponse):
                report.failed.extend((rest, f"association lost: {why}") for rest in files[index + 1 :])
                return report, []
            if lost is not None:
                return report, list(files[index + 1 :])
    finally:
        assoc.abort() if lost is not None else assoc.release()
    return report, []


def _contexts(headers: Iterable[FileHeader]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose: per SOP class, the uncompressed syntaxes together and
    each compressed syntax alone."""
    contexts: dict[tuple[str, str], list[str]] = {}  # (SOP class, compressed TS or "") -> syntaxes
    for h in headers:
        plain = contexts.setdefault((h.sop_class, ""), [str(u) for u in _UNCOMPRESSED])
        if h.transfer_syntax.is_compressed:
            contexts.setdefault((h.sop_class, str(h.transfer_syntax)), [str(h.transfer_syntax)])
        elif str(h.transfer_syntax) not in plain:
            plain.append(str(h.transfer_syntax))
    if len(contexts) > MAX_CONTEXTS:
        raise DeliveryError(
            f"{len(contexts)} presentation contexts needed; at most {MAX_CONTEXTS} fit in one association"
        )
    return [(sop_class, syntaxes) for (sop_class, _), syntaxes in contexts.items()]


def _send_one(assoc: StoreAssociation, path: Path, header: FileHeader) -> tuple[bool, str]:
    """Raises :class:`AssociationLost`; any other failure is this file's outcome."""
    try:
        context_id, data = _encoded_for(assoc, path, header)
    except _NotSendable as e:
        return False, str(e)
    status = assoc.c_store(context_id, header.sop_class, header.sop_instance, memoryview(data))
    if is_success_or_warning(status.status):
        return True, ""
    return False, f"status 0x{status.status:04X} {status.error_comment}".strip()


class _NotSendable(Exception):
    """This file cannot go over this association (no context, unreadable, no codec)."""


def _encoded_for(assoc: StoreAssociation, path: Path, header: FileHeader) -> tuple[int, bytes]:
    """The accepted context and the data set encoded for it: the file's own bytes when its
    transfer syntax was accepted, else decoded and encoded in an accepted uncompressed one."""
    accepted = assoc.accepted_syntaxes(header.sop_class)
    if not accepted:
        raise _NotSendable(f"peer accepted no presentation context for SOP class {header.sop_class}")
    try:
        if str(header.transfer_syntax) in accepted:
            context_id = assoc.context_for(header.sop_class, str(header.transfer_syntax))
            assert context_id is not None
            return context_id, data_set_bytes(path, header)
        target = next((UID(ts) for ts in accepted if not UID(ts).is_compressed), None)
        if target is None:
            raise _NotSendable(
                f"peer accepted neither {header.transfer_syntax.name} nor an uncompressed syntax for "
                f"SOP class {header.sop_class}"
            )
        dataset = read_dicom(path)
        if header.transfer_syntax.is_compressed:
            dataset.decompress(generate_instance_uid=False)  # the peer takes only uncompressed data here
        encoded = encode(dataset, target.is_implicit_VR, target.is_little_endian, target.is_deflated)
    except (OSError, InvalidDicomError, ValueError, RuntimeError, NotImplementedError, AttributeError) as e:
        raise _NotSendable(f"{type(e).__name__}: {e}") from e
    if encoded is None:
        raise _NotSendable(f"cannot encode the data set in {target.name}")
    context_id = assoc.context_for(header.sop_class, str(target))
    assert context_id is not None
    return context_id, encoded
