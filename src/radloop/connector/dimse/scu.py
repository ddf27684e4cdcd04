"""C-STORE SCU: send DICOM files to a peer (``radloop send`` and the ``dicom`` destination).

Transfer syntax negotiation: for each SOP class, each compressed transfer syntax the files use
is proposed in a presentation context of its own, and Explicit/Implicit VR Little Endian in one
more. (Offered together in one context, the peer picks one syntax for all, and most pick
uncompressed.) A file goes as it is when the peer accepted its syntax; otherwise it is
decompressed first, keeping its SOP Instance UID: a change of transfer syntax is the same
instance (PS3.5 §10), so a retried or re-routed result never becomes a second copy.

PDUs are as large as the peer accepts (pynetdicom sends up to the peer's maximum);
``associations`` > 1 sends over that many parallel associations. (Streaming files undecoded with
pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` was tried and stalled against ``storescp --fork`` with
512×512 files under load; it is not used.)
"""

from __future__ import annotations

import gzip
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from radloop.connector.dimse.status import is_success_or_warning
from radloop.core.errors import DeliveryError

log = logging.getLogger(__name__)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128


@dataclass
class SendReport:
    """Per-file outcome of a send."""

    sent: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


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
    per-file failures are reported, not raised.

    Where the peer refuses some of the parallel associations (its limit), their files go over
    one more association after the others. ``tls_args``: (context, server name) for DICOM TLS
    (:func:`radloop.connector.dimse.tls.tls_args`). Raises :class:`DeliveryError` if no association can
    be made at all.
    """
    headers = {f: read_dicom(f, stop_before_pixels=True) for f in files}
    count = max(1, min(associations, len(files)))
    if count == 1:
        return _send_over_one(
            files, headers, host, port, called_ae, calling_ae, timeout_s, on_progress, tls_args
        )
    lock = threading.Lock()

    def progress(path: Path, ok: bool) -> None:
        if on_progress is not None:
            with lock:
                on_progress(path, ok)

    chunks = [list(files[i::count]) for i in range(count)]
    peer = (host, port, called_ae, calling_ae, timeout_s, progress, tls_args)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="radloop-send") as pool:
        futures = [pool.submit(_send_over_one, chunk, headers, *peer) for chunk in chunks]
    report, refused, refusals = SendReport(), [], 0
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            part = future.result()
        except DeliveryError:
            refused.extend(chunk)
            refusals += 1
            continue
        report.sent.extend(part.sent)
        report.failed.extend(part.failed)
    if refused:
        if len(refused) == len(files):
            raise DeliveryError(
                f"no association with {called_ae}@{host}:{port} (rejected, aborted or unreachable)"
            )
        log.info("%d of %d parallel associations refused; sending their files over one", refusals, count)
        part = _send_over_one_retrying(refused, headers, peer)
        report.sent.extend(part.sent)
        report.failed.extend(part.failed)
    return report


FALLBACK_TRIES = 5
"""Tries for the one association that carries what refused parallel associations left: the peer
may still count the associations just released against its limit (a transient rejection)."""


def _send_over_one_retrying(
    files: Sequence[Path], headers: dict[Path, Dataset], peer: tuple[Any, ...]
) -> SendReport:
    for attempt in range(1, FALLBACK_TRIES + 1):
        try:
            return _send_over_one(files, headers, *peer)
        except DeliveryError:
            if attempt == FALLBACK_TRIES:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _send_over_one(
    files: Sequence[Path],
    headers: dict[Path, Dataset],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout_s: float,
    on_progress: Callable[[Path, bool], None] | None,
    tls_args: tuple[ssl.SSLContext, str] | None,
) -> SendReport:
    ae = _requestor(calling_ae, timeout_s, (headers[f] for f in files))
    assoc = ae.associate(
        host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)], tls_args=tls_args
    )
    if not assoc.is_established:
        over = (
            "DICOM TLS: rejected, aborted, unreachable or handshake failed"
            if tls_args
            else "rejected, aborted or unreachable"
        )
        raise DeliveryError(f"no association with {called_ae}@{host}:{port} ({over})")
    report = SendReport()
    try:
        for f in files:
            ok, why = _send_one(assoc, f, headers[f])
            (report.sent.append(f) if ok else report.failed.append((f, why)))
            if on_progress:
                on_progress(f, ok)
            if not assoc.is_established:
                for rest in files[len(report.sent) + len(report.failed) :]:
                    report.failed.append((rest, "association lost"))
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def _requestor(calling_ae: str, timeout_s: float, headers: Iterable[Dataset]) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts: dict[tuple[str, str], list[str]] = {}  # (SOP class, compressed TS or "") -> syntaxes
    for ds in headers:
        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        sop_class = str(ds.SOPClassUID)
        plain = contexts.setdefault((sop_class, ""), [str(u) for u in _UNCOMPRESSED])
        if ts.is_compressed:
            contexts.setdefault((sop_class, str(ts)), [str(ts)])
        elif str(ts) not in plain:
            plain.append(str(ts))
    if len(contexts) > MAX_CONTEXTS:
        raise DeliveryError(
            f"{len(contexts)} presentation contexts needed; at most {MAX_CONTEXTS} fit in one association"
        )
    for (sop_class, _), syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def _nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _send_one(assoc: object, path: Path, header: Dataset) -> tuple[bool, str]:
    ts = UID(str(header.file_meta.TransferSyntaxUID))
    accepted = {
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
        if cx.abstract_syntax == header.SOPClassUID
    }
    if not accepted:
        return False, f"peer accepted no presentation context for SOP class {header.SOPClassUID}"
    dataset = read_dicom(path)
    if str(ts) not in accepted and ts.is_compressed:
        dataset.decompress(generate_instance_uid=False)  # the peer takes only uncompressed data here
    try:
        status = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except (ValueError, RuntimeError, OSError, InvalidDicomError) as e:
        return False, f"{type(e).__name__}: {e}"
    code = int(getattr(status, "Status", -1)) if status else -1
    if is_success_or_warning(code):
        return True, ""
    comment = str(getattr(status, "ErrorComment", "")) if status else "no response (timeout or abort)"
    return False, f"status 0x{code:04X} {comment}".strip()
