"""One batch of received instances: a C-STORE association, a STOW-RS request, a retrieve from a
PACS. Each instance goes through the same checks (:mod:`radloop.connector.sanity`) and the same
store (durable file, then index); when the batch ends (the association is released, the request
or retrieve finishes) the series it carried are handed to the assembler: completed at once where
the listener has ``complete_on_release``, else after the quiet period. A batch that fails
part-way (an aborted association) is left to the quiet period."""

from __future__ import annotations

import io
import logging
import struct
import threading
from collections.abc import Callable, Sequence
from types import TracebackType

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from radloop.connector.peer_text import shown
from radloop.connector.sanity import InstanceLimits, check_part10
from radloop.connector.store import Buffer, InstanceStore, StoredInstance, describe
from radloop.core.errors import InvalidInstanceError

log = logging.getLogger(__name__)
PREAMBLE = bytes(128)
SeriesCallback = Callable[[set[int], str], None]


class IngestSession:
    """Stores instances for one called (listener) AE title and completes their series at the end."""

    def __init__(
        self,
        store: InstanceStore,
        on_end: SeriesCallback,
        called_ae: str,
        calling_ae: str,
        limits: InstanceLimits | None = None,
        kind: str = "batch",
        on_series: Callable[[int], None] | None = None,
    ) -> None:
        """``on_series(series_id)`` is called when the batch stores into a series the first time."""
        self.store = store
        self.limits = limits or store.limits
        self.kind = kind  # "association" for the C-STORE SCP: worded as such in the end log line
        self.on_end = on_end
        self.called_ae = called_ae
        self.calling_ae = calling_ae
        self.series_ids: set[int] = set()
        self.stored = 0
        self.on_series = on_series
        self._lock = threading.Lock()

    def store_file(self, data: bytes) -> tuple[Dataset, StoredInstance]:
        """Store one DICOM PS3.10 file (preamble optional, File Meta Information required), after
        the sanity checks of :func:`~radloop.connector.sanity.check_part10`."""
        encoded = as_part10(data)
        ds = check_part10(encoded, self.limits)
        return ds, self._store(encoded, ds)

    def store_encoded(self, encoded: Buffer | Sequence[Buffer], header: Dataset) -> StoredInstance:
        """Store a complete PS3.10 file whose data set was already checked; ``header`` is its data
        set up to the pixel data, with ``file_meta`` (what the C-STORE SCP has after its checks).
        ``encoded`` may come in parts (the SCP: :func:`part10_prefix` and the received data set,
        written with one ``writev``, never joined in memory)."""
        return self._store(encoded, header)

    def store_dataset(self, ds: Dataset) -> StoredInstance:
        """Store a data set read elsewhere (it must carry its ``file_meta``): encoded as a PS3.10 file."""
        if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
            raise InvalidInstanceError("the data set has no File Meta Information (no Transfer Syntax UID)")
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        except (ValueError, AttributeError) as e:
            raise InvalidInstanceError(f"cannot encode the data set: {e}") from e
        return self._store(buffer.getvalue(), ds)

    def _store(self, encoded: Buffer | Sequence[Buffer], ds: Dataset) -> StoredInstance:
        info = describe(ds, str(ds.file_meta.TransferSyntaxUID), self.called_ae, self.calling_ae)
        meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
        if meta_uid and meta_uid != info.sop_instance_uid:
            raise InvalidInstanceError(
                f"SOPInstanceUID {info.sop_instance_uid} differs from MediaStorageSOPInstanceUID {meta_uid}"
            )
        stored = self.store.store(encoded, info, ds)
        with self._lock:
            first = stored.series_id not in self.series_ids
            self.series_ids.add(stored.series_id)
            self.stored += 1
        if first and self.on_series is not None:
            self.on_series(stored.series_id)
        return stored

    def end(self) -> None:
        """The batch is over (an association released): hand its series to the assembler."""
        with self._lock:
            series_ids, self.series_ids = set(self.series_ids), set()
        if series_ids:
            if self.kind == "association":
                log.info(
                    "association released by %s: %d series, %d instance(s) from '%s'",
                    self.called_ae,
                    len(series_ids),
                    self.stored,
                    shown(self.calling_ae),
                )
            else:
                log.info(
                    "%s from %s ended: %d instance(s) in %d series",
                    self.called_ae,
                    shown(self.calling_ae),
                    self.stored,
                    len(series_ids),
                )
            self.on_end(series_ids, self.called_ae)

    def __enter__(self) -> IngestSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end()


class AssociationTracker:
    """Which open associations carry which series, over every listener process, so that
    association-end completion waits for the last of them.

    Four parallel associations sending one series must complete it once, when the last one is
    released, not when the first one is (the others would re-open it: a second revision, a
    second job). ``carrying`` is called when an association stores into a series the first
    time, ``ended`` when it is released or aborted. When a series' last carrier is released,
    ``on_complete`` gets it; when its last carrier aborted, it is left to the quiet period (as
    is a series whose carrier's process died: the quiet period is the fallback for everything).
    Keys name associations across processes (``<pid>:<id>``).
    """

    def __init__(self, on_complete: SeriesCallback) -> None:
        self.on_complete = on_complete
        self._lock = threading.Lock()
        self._carriers: dict[int, set[str]] = {}

    def carrying(self, key: str, series_id: int) -> None:
        with self._lock:
            self._carriers.setdefault(series_id, set()).add(key)

    def ended(self, key: str, series_ids: Sequence[int], called_ae: str, released: bool) -> None:
        done: set[int] = set()
        with self._lock:
            for series_id in series_ids:
                carriers = self._carriers.get(series_id)
                if carriers is not None:
                    carriers.discard(key)
                    if carriers:
                        continue  # another association still sends into it
                    del self._carriers[series_id]
                done.add(series_id)
        if released and done:
            self.on_complete(done, called_ae)


def part10_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information of a received data set, encoded directly
    (the same bytes pydicom writes for pynetdicom's ``event.file_meta``, without building and
    validating a data set for each instance). Raises :class:`InvalidInstanceError` for a UID
    that is not ASCII."""
    elements = b"".join(
        (
            struct.pack("<HH2s2xI", 2, 0x0001, b"OB", 2) + b"\x00\x01",
            _short_element(0x0002, b"UI", _uid_bytes(sop_class_uid)),
            _short_element(0x0003, b"UI", _uid_bytes(sop_instance_uid)),
            _short_element(0x0010, b"UI", _uid_bytes(transfer_syntax_uid)),
            _short_element(0x0012, b"UI", _uid_bytes(PYNETDICOM_IMPLEMENTATION_UID)),
            _short_element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")),
        )
    )
    return PREAMBLE + b"DICM" + struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(elements)) + elements


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _uid_bytes(uid: str) -> bytes:
    try:
        return _padded(str(uid).encode("ascii"), b"\x00")
    except UnicodeEncodeError as e:
        raise InvalidInstanceError(f"UID {shown(uid)} is not ASCII") from e


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def as_part10(data: bytes) -> bytes:
    """``data`` as a complete PS3.10 file; a missing 128-byte preamble is added (tolerant read)."""
    if data[128:132] == b"DICM":
        return data
    if data[:4] == b"DICM":
        return PREAMBLE + data
    raise InvalidInstanceError("not a DICOM PS3.10 file (no 'DICM' prefix and File Meta Information)")


def read_header(encoded: bytes) -> Dataset:
    """The data set of a PS3.10 file without its pixel data; :class:`InvalidInstanceError` if unreadable."""
    try:
        ds = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError) as e:
        raise InvalidInstanceError(f"cannot read the DICOM file: {type(e).__name__}: {e}") from e
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidInstanceError("the File Meta Information has no TransferSyntaxUID")
    return ds
