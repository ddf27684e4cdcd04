"""STOW-RS receiver (PS3.18 §10.5): a ``multipart/related; type="application/dicom"`` request body
is stored instance by instance through the same store as C-STORE, on a *virtual AE title* (a
listener's ``ae_title``) so routing and completion work as for an association to that AE: when the
request ends, the series it carried are completed (if the listener has ``complete_on_release``).

The answer is the Store Instances Response Module as DICOM JSON: ``ReferencedSOPSequence``
(stored, with each one's RetrieveURL), ``FailedSOPSequence`` (with a ``FailureReason`` code), and
``OtherFailuresSequence`` (parts that could not even be identified). HTTP status: 200 all stored,
202 some stored, 409 none stored. A resent instance is stored again idempotently (Success).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

from radloop.connector.dicomweb.multipart import SpooledPart, SpoolingMultipartReader, parse_media_type
from radloop.connector.ingest import IngestSession, as_part10
from radloop.connector.sanity import (
    InconsistentInstanceError,
    InstanceLimitError,
    InstanceLimits,
    check_part10,
)
from radloop.core.errors import (
    DiskFullError,
    InvalidInstanceError,
    PayloadTooLargeError,
    RequestError,
    StoreError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
T = TypeVar("T")
InThread = Callable[[Callable[[], T]], Awaitable[T]]


@dataclass(frozen=True)
class Failure:
    """One instance (or unidentifiable part) that was not stored, and why."""

    reason: int
    text: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass
class StowOutcome:
    """What a STOW-RS request stored and refused."""

    study_url: str
    accepted: list[tuple[str, str, str]] = field(default_factory=list)  # (SOP class, SOP instance, URL)
    failed: list[Failure] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some stored, 409 none stored (PS3.18 §10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.accepted else 409

    def dataset(self) -> Dataset:
        """The Store Instances Response Module."""
        ds = Dataset()
        if self.study_url:
            ds.RetrieveURL = self.study_url
        ds.ReferencedSOPSequence = [_item(c, i, url=u) for c, i, u in self.accepted]
        identified = [f for f in self.failed if f.sop_instance_uid]
        ds.FailedSOPSequence = [
            _item(f.sop_class_uid, f.sop_instance_uid, reason=f.reason) for f in identified
        ]
        others = [f for f in self.failed if not f.sop_instance_uid]
        if others:
            ds.OtherFailuresSequence = [_reason_item(f.reason) for f in others]
        return ds

    def json(self) -> dict[str, Any]:
        return self.dataset().to_json_dict()

    def warnings(self, limit: int = 20) -> list[str]:
        """HTTP ``Warning`` values (RFC 7234 299) explaining the first failures in words."""
        out = []
        for f in self.failed[:limit]:
            who = f"SOP Instance {f.sop_instance_uid}" if f.sop_instance_uid else "a body part"
            text = f"{who} not stored (0x{f.reason:04X}): {f.text}".replace('"', "'")
            out.append(f'299 radloop "{text[:300]}"')
        return out


def _item(sop_class: str, sop_instance: str, *, url: str = "", reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class or None
    item.ReferencedSOPInstanceUID = sop_instance
    if url:
        item.RetrieveURL = url
    if reason is not None:
        item.FailureReason = reason
    return item


def _reason_item(reason: int) -> Dataset:
    item = Dataset()
    item.FailureReason = reason
    return item


class StowRequest:
    """One STOW-RS request: parts in, an outcome out."""

    def __init__(
        self,
        session: IngestSession,
        study_uid: str | None,
        url_of: Callable[..., str],
        limits: InstanceLimits | None = None,
    ) -> None:
        self.session = session
        self.study_instance_uid = study_uid
        self.url_of = url_of
        self.limits = limits or InstanceLimits()
        self.outcome = StowOutcome(url_of(study_uid) if study_uid else "")

    def add(self, part: SpooledPart) -> None:
        """Store one spooled body part (its file is removed); a failure is recorded, never raised."""
        try:
            self._add(part)
        finally:
            part.path.unlink(missing_ok=True)

    def _add(self, part: SpooledPart) -> None:
        media = part.content_type
        if media is not None and media.type != "application/dicom":
            self._fail(
                Failure(CANNOT_UNDERSTAND, f"body part of type {media.type}, expected application/dicom")
            )
            return
        try:
            ds, _stored = self._store(part.path.read_bytes())
        except _Refused as e:
            self._fail(e.failure)
            return
        self.outcome.accepted.append(
            (
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                self.url_of(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)),
            )
        )

    def _store(self, content: bytes) -> tuple[Dataset, object]:
        ds: Dataset | None = None
        try:
            encoded = as_part10(content)
            ds = _meta_only(encoded)
            ds = check_part10(encoded, self.limits)  # before pydicom reads it: bombs, lies, limits
            if self.study_instance_uid and str(ds.get("StudyInstanceUID", "")) != self.study_instance_uid:
                text = f"StudyInstanceUID is not the target study {self.study_instance_uid}"
                raise _Refused(Failure(DATASET_MISMATCH, text, *_uids(ds)))
            return ds, self.session.store_encoded(encoded, ds)  # checked just above: not twice
        except (DiskFullError, InstanceLimitError) as e:
            raise _Refused(Failure(OUT_OF_RESOURCES, str(e), *_uids(ds))) from e
        except InconsistentInstanceError as e:
            raise _Refused(Failure(DATASET_MISMATCH, str(e), *_uids(ds))) from e
        except InvalidInstanceError as e:
            raise _Refused(Failure(CANNOT_UNDERSTAND, str(e), *_uids(ds))) from e
        except StoreError as e:
            raise _Refused(Failure(PROCESSING_FAILURE, str(e), *_uids(ds))) from e

    def _fail(self, failure: Failure) -> None:
        log.warning("STOW-RS to %s: %s", self.session.called_ae, failure.text)
        self.outcome.failed.append(failure)


class _Refused(Exception):  # noqa: N818 - internal signal carrying a Failure
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.text)
        self.failure = failure


def _meta_only(encoded: bytes) -> Dataset | None:
    """An empty data set carrying the File Meta Information of ``encoded`` (to name a refused
    instance by its MediaStorageSOPInstanceUID before its data set is read); None if unreadable."""
    try:
        stream = io.BytesIO(encoded)
        read_preamble(stream, force=False)
        ds = Dataset()
        ds.file_meta = FileMetaDataset(_read_file_meta_info(stream))
        return ds
    except (InvalidDicomError, ValueError, EOFError, KeyError, OSError):
        return None


def _uids(ds: Dataset | None) -> tuple[str, str]:
    """SOP class and instance UIDs naming a refused instance: the data set's, else its file meta's."""
    if ds is None:
        return "", ""
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "") or "")
    return sop_class.strip(), sop_instance.strip()


def boundary_of(content_type: str | None) -> str:
    """The boundary of a STOW-RS request's Content-Type; :class:`UnsupportedMediaTypeError` otherwise."""
    media = parse_media_type(content_type or "")
    inner = media.params.get("type", "application/dicom").lower()
    if media.type != "multipart/related" or inner != "application/dicom":
        raise UnsupportedMediaTypeError(
            f'STOW-RS takes multipart/related; type="application/dicom", not {content_type or "(none)"}'
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise RequestError("multipart/related Content-Type has no boundary parameter")
    return boundary


def check_length(content_length: str | None, max_bytes: int) -> None:
    """Refuse a declared body larger than ``max_bytes`` before reading it (413)."""
    declared = content_length or ""
    if declared.isascii() and declared.isdigit() and len(declared) < 20 and int(declared) > max_bytes:
        raise PayloadTooLargeError(
            f"request body of {declared} bytes is larger than api.max_request_bytes ({max_bytes})"
        )


async def receive(
    request: StowRequest,
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    max_bytes: int,
    in_thread: InThread[Any],
    spool_dir: Path,
) -> StowOutcome:
    """Read a STOW-RS body chunk by chunk, spooling each part to a file in ``spool_dir`` and
    storing it (in a worker thread) once complete; memory stays at a chunk, whatever the parts.

    The request's series are handed to the assembler only when the whole body was read.
    """
    reader = SpoolingMultipartReader(boundary_of(content_type), spool_dir)
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLargeError(f"request body larger than api.max_request_bytes ({max_bytes})")
            for part in reader.feed(chunk):
                await in_thread(lambda part=part: request.add(part))  # type: ignore[misc]
        reader.finish()
    finally:
        reader.close()
    if not request.outcome.accepted and not request.outcome.failed:
        raise RequestError("the multipart body holds no instance")
    await in_thread(request.session.end)
    return request.outcome
