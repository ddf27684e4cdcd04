"""The instance store: every received instance is durably on disk, then indexed.

Layout: ``<data_dir>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Order of operations (this is what lets the SCP acknowledge safely):

1. validate the identifying UIDs (an object without them cannot be stored or routed);
2. write the bytes to a temporary file in the target folder, ``fsync`` it, ``rename`` it into
   place and ``fsync`` the folder, so the file survives a crash or power loss;
3. index it (study, series, instance rows) in one transaction.

Only after step 3 does the caller answer Success. A duplicate SOP Instance UID is idempotent:
the file is rewritten in place and the index row kept. A *new* instance arriving for a series
that is already complete re-opens the series (it is never dropped); a resent duplicate does not.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from radloop.core.errors import DiskFullError, InvalidInstanceError, StoreError
from radloop.core.models import Instance, RoutingStatus, Series, SeriesState, Study, utcnow
from radloop.core.refs import is_valid_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    """What the connector knows about one received object, besides its bytes."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    called_ae: str = ""
    calling_ae: str = ""


@dataclass(frozen=True)
class StoredInstance:
    """The outcome of :meth:`InstanceStore.store`."""

    series_id: int
    path: Path
    duplicate: bool
    reopened: bool


def describe(
    ds: Dataset, transfer_syntax_uid: str, called_ae: str = "", calling_ae: str = ""
) -> ReceivedInstance:
    """Pull the identifying UIDs out of a data set, refusing objects that lack valid ones."""

    def uid(keyword: str) -> str:
        value = str(ds.get(keyword, "") or "").strip()
        if not is_valid_uid(value):
            shown = repr(value) if value else "empty"
            raise InvalidInstanceError(
                f"{keyword} is {shown}: not a valid UID, the instance cannot be stored"
            )
        return value

    return ReceivedInstance(
        study_instance_uid=uid("StudyInstanceUID"),
        series_instance_uid=uid("SeriesInstanceUID"),
        sop_instance_uid=uid("SOPInstanceUID"),
        sop_class_uid=uid("SOPClassUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        called_ae=called_ae,
        calling_ae=calling_ae,
    )


class InstanceStore:
    """Atomic, durable instance files plus their index rows."""

    def __init__(self, data_dir: Path, engine: Engine, min_free_bytes: int = 0) -> None:
        self.root = data_dir / "instances"
        self.data_dir = data_dir
        self.engine = engine
        self.min_free_bytes = min_free_bytes
        self._index_lock = threading.Lock()  # one writer at a time: no upsert races on SQLite or PG
        self._series_ids: dict[str, int] = {}  # SeriesInstanceUID → series.id (never changes once made)
        self.root.mkdir(parents=True, exist_ok=True)

    def has_space(self) -> bool:
        """True while free space on the data volume is above the configured floor."""
        return self.min_free_bytes <= 0 or shutil.disk_usage(self.root).free >= self.min_free_bytes

    def path_for(self, info: ReceivedInstance) -> Path:
        return self.root / info.study_instance_uid / info.series_instance_uid / f"{info.sop_instance_uid}.dcm"

    def store(self, encoded: bytes, info: ReceivedInstance, ds: Dataset) -> StoredInstance:
        """Write ``encoded`` (a complete DICOM file: preamble, meta, data set) durably, then index it."""
        if not self.has_space():
            raise DiskFullError(
                f"free space on {self.root} is below the floor of {self.min_free_bytes} bytes; "
                "refusing new data"
            )
        path = self.path_for(info)
        _write_durably(path, encoded)
        try:
            return self._index(info, ds, path, len(encoded))
        except IntegrityError:
            # A concurrent writer (another process on PostgreSQL) created a row first: index again.
            self._series_ids.pop(info.series_instance_uid, None)
            return self._index(info, ds, path, len(encoded))

    def _index(self, info: ReceivedInstance, ds: Dataset, path: Path, size: int) -> StoredInstance:
        """Index rows for one stored file: a few Core statements, study/series ids cached by UID."""
        with self._index_lock, self.engine.begin() as conn:
            existing = conn.execute(
                select(Instance.id).where(Instance.sop_instance_uid == info.sop_instance_uid)
            ).first()
            series_id = self._series_id(conn, info, ds)
            now = utcnow()
            reopened = False
            if existing is None:
                conn.execute(
                    insert(Instance).values(
                        series_id=series_id,
                        sop_instance_uid=info.sop_instance_uid,
                        sop_class_uid=info.sop_class_uid,
                        transfer_syntax_uid=info.transfer_syntax_uid,
                        instance_number=_int_or_none(ds.get("InstanceNumber")),
                        path=str(path.relative_to(self.data_dir)),
                        size_bytes=size,
                        received_at=now,
                    )
                )
                reopened = _reopen_if_complete(conn, series_id)
            conn.execute(
                update(Series)
                .where(col(Series.id) == series_id)
                .values(
                    last_received_at=now,
                    instance_count=Series.instance_count + (1 if existing is None else 0),
                )
            )
            return StoredInstance(series_id, path, duplicate=existing is not None, reopened=reopened)

    def _series_id(self, conn: Connection, info: ReceivedInstance, ds: Dataset) -> int:
        cached = self._series_ids.get(info.series_instance_uid)
        if cached is not None:
            return cached
        study_id = _get_or_create_study(conn, info, ds)
        series_id = _get_or_create_series(conn, study_id, info, ds)
        self._series_ids[info.series_instance_uid] = series_id
        return series_id


def _write_durably(path: Path, data: bytes) -> None:
    """temp file → fsync → rename → fsync(folder): the file is either absent or complete after a crash."""
    folder = path.parent
    try:
        new_dirs = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(folder)
        if new_dirs:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _get_or_create_study(conn: Connection, info: ReceivedInstance, ds: Dataset) -> int:
    row = conn.execute(select(Study.id).where(Study.study_instance_uid == info.study_instance_uid)).first()
    if row is not None:
        return int(row[0])
    res = conn.execute(
        insert(Study).values(
            study_instance_uid=info.study_instance_uid,
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
            study_description=_text(ds, "StudyDescription"),
            created_at=utcnow(),
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def _get_or_create_series(conn: Connection, study_id: int, info: ReceivedInstance, ds: Dataset) -> int:
    row = conn.execute(
        select(Series.id).where(Series.series_instance_uid == info.series_instance_uid)
    ).first()
    if row is not None:
        return int(row[0])
    now = utcnow()
    res = conn.execute(
        insert(Series).values(
            study_id=study_id,
            series_instance_uid=info.series_instance_uid,
            modality=_text(ds, "Modality"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=_int_or_none(ds.get("SeriesNumber")),
            sop_class_uid=info.sop_class_uid,
            called_ae=info.called_ae,
            calling_ae=info.calling_ae,
            state=SeriesState.open,
            revision=0,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
            routing_status=RoutingStatus.pending,
            routing_note="",
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def _reopen_if_complete(conn: Connection, series_id: int) -> bool:
    """A new instance for a complete series re-opens it, to be completed and routed again."""
    res = conn.execute(
        update(Series)
        .where(col(Series.id) == series_id, col(Series.state) == SeriesState.complete)
        .values(
            state=SeriesState.open,
            routing_status=RoutingStatus.pending,
            routing_note="re-opened by a late instance after completion",
        )
    )
    if res.rowcount:
        log.info("series %s re-opened by a late instance", series_id)
    return bool(res.rowcount)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
