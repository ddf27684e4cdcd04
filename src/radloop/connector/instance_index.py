"""The index rows of one received instance, written on the database driver's own cursor.

Every acknowledged instance needs its rows committed before Success (both durability modes), so
these few statements sit on the C-STORE critical path. Through SQLAlchemy Core they cost about
3 ms per instance under the profiler (statement cache keys, parameter and result processing for
four or five one-row statements), more than the file write and its fsyncs. Here the same
statements are written once per database as plain SQL and run on a pooled DBAPI connection
(``engine.raw_connection()``): one code path for SQLite and PostgreSQL, only the placeholder
style differs (``:name`` for sqlite3, ``%(name)s`` for psycopg). Values are converted with the
columns' own SQLAlchemy bind processors, so a row written here is the row Core would write
(timestamps in SQLite's text form, enums by name).

Per instance, in one transaction: look the SOP Instance UID up; create the study and series on
the series' first instance (their ids are then cached: a series row never changes id); insert the
instance; re-open the series if it was complete; bump its count and last-received time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from sqlalchemy import Column
from sqlalchemy.engine import Engine

from radloop.core.errors import PARSE_ERRORS, ConfigError, InvalidInstanceError, StoreError
from radloop.core.models import Instance, RoutingStatus, Series, SeriesState, Study, utcnow

log = logging.getLogger(__name__)

# One statement per step; ``:name`` placeholders, rewritten for the driver's paramstyle.
_SQL: dict[str, str] = {
    "find_instance": "SELECT id, path FROM instance WHERE sop_instance_uid = :sop_instance_uid",
    "find_study": "SELECT id FROM study WHERE study_instance_uid = :study_instance_uid",
    "find_series": "SELECT id FROM series WHERE series_instance_uid = :series_instance_uid",
    "insert_study": (
        "INSERT INTO study (study_instance_uid, patient_id, patient_name, accession_number, "
        "study_date, study_description, created_at) VALUES (:study_instance_uid, :patient_id, "
        ":patient_name, :accession_number, :study_date, :study_description, :created_at) RETURNING id"
    ),
    "insert_series": (
        "INSERT INTO series (study_id, series_instance_uid, modality, series_description, "
        "series_number, sop_class_uid, called_ae, calling_ae, state, revision, instance_count, "
        "first_received_at, last_received_at, routing_status, routing_note) VALUES (:study_id, "
        ":series_instance_uid, :modality, :series_description, :series_number, :sop_class_uid, "
        ":called_ae, :calling_ae, :state, 0, 0, :first_received_at, :last_received_at, "
        ":routing_status, :routing_note) RETURNING id"
    ),
    "insert_instance": (
        "INSERT INTO instance (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
        "instance_number, path, size_bytes, received_at) VALUES (:series_id, :sop_instance_uid, "
        ":sop_class_uid, :transfer_syntax_uid, :instance_number, :path, :size_bytes, :received_at)"
    ),
    "reopen_series": (
        "UPDATE series SET state = :state, routing_status = :routing_status, "
        "routing_note = :routing_note WHERE id = :series_id AND state = :complete"
    ),
    "touch_series": (
        "UPDATE series SET last_received_at = :last_received_at, "
        "instance_count = instance_count + :added WHERE id = :series_id"
    ),
}
# Parameters whose value a column type converts (timestamps, enums): bound through that type.
_TYPED: dict[str, Column[Any]] = {
    "created_at": Study.__table__.c.created_at,  # type: ignore[attr-defined]
    "first_received_at": Series.__table__.c.first_received_at,  # type: ignore[attr-defined]
    "last_received_at": Series.__table__.c.last_received_at,  # type: ignore[attr-defined]
    "received_at": Instance.__table__.c.received_at,  # type: ignore[attr-defined]
    "state": Series.__table__.c.state,  # type: ignore[attr-defined]
    "complete": Series.__table__.c.state,  # type: ignore[attr-defined]
    "routing_status": Series.__table__.c.routing_status,  # type: ignore[attr-defined]
}
_PLAIN = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
_TAGS = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in _PLAIN}
_PLACEHOLDER = re.compile(r":([a-z_]+)")
REOPENED_NOTE = "re-opened by a late instance after completion"


@dataclass(frozen=True)
class IndexedInstance:
    """What indexing one instance did."""

    series_id: int
    duplicate: bool
    reopened: bool


class IndexedElsewhereError(Exception):
    """The SOP Instance UID is already indexed at another path (``existing_path``)."""

    def __init__(self, existing_path: str) -> None:
        super().__init__(existing_path)
        self.existing_path = existing_path


@dataclass(frozen=True)
class InstanceRow:
    """The values the index keeps for one instance (and, on a series' first one, its study and series)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    called_ae: str
    calling_ae: str
    path: str  # relative to data_dir
    size_bytes: int


class InstanceIndex:
    """Writes instance rows on the driver's cursor, one transaction per instance, one at a time."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        if dialect.paramstyle in ("named", "qmark") and dialect.name == "sqlite":
            self._sql = dict(_SQL)  # sqlite3 takes :name placeholders whatever its declared style
        elif dialect.paramstyle == "pyformat":
            self._sql = {k: _PLACEHOLDER.sub(r"%(\1)s", v) for k, v in _SQL.items()}
        else:
            raise ConfigError(f"the instance index supports SQLite and PostgreSQL, not {dialect.name}")
        self._bind: dict[str, Callable[[Any], Any]] = {}
        for name, column in _TYPED.items():
            processor = column.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._bind[name] = processor
        dbapi = dialect.loaded_dbapi
        self._integrity_error: type[Exception] = dbapi.IntegrityError
        self._dbapi_error: type[Exception] = dbapi.Error
        self.engine = engine
        self._lock = threading.Lock()  # one writer per process: no upsert races on SQLite or PG
        self._series_ids: dict[str, int] = {}  # SeriesInstanceUID → series.id (never changes once made)

    def add(self, row: InstanceRow, ds: Dataset) -> IndexedInstance:
        """Index one stored file (``ds``: its header, for the study and series attributes).

        Raises :class:`IndexedElsewhereError` when the SOP Instance UID is indexed at another path
        (nothing is written), :class:`StoreError` when the database refuses."""
        try:
            try:
                return self._transaction(row, ds)
            except self._integrity_error:
                # a concurrent writer (another listener process) created a row first: index again
                self._series_ids.pop(row.series_instance_uid, None)
                return self._transaction(row, ds)
        except self._dbapi_error as e:
            raise StoreError(f"cannot index SOP Instance {row.sop_instance_uid}: {e}") from e

    def _transaction(self, row: InstanceRow, ds: Dataset) -> IndexedInstance:
        with self._lock:
            connection = self.engine.raw_connection()  # pooled; PostgreSQL's is pinged first
            try:
                cursor = connection.cursor()
                try:
                    done = self._rows(cursor, row, ds)
                    connection.commit()
                    return done
                finally:
                    cursor.close()
            except self._integrity_error:
                connection.rollback()
                raise
            except self._dbapi_error:
                # the server may be gone (a PostgreSQL restart): never hand this one back to the pool
                connection.invalidate()
                raise
            except BaseException:
                connection.rollback()
                raise
            finally:
                connection.close()  # back to the pool (a no-op once invalidated)

    def _rows(self, cursor: Any, row: InstanceRow, ds: Dataset) -> IndexedInstance:
        self._run(cursor, "find_instance", {"sop_instance_uid": row.sop_instance_uid})
        existing = cursor.fetchone()
        if existing is not None and str(existing[1]) != row.path:
            raise IndexedElsewhereError(str(existing[1]))
        series_id = self._series_id(cursor, row, ds)
        now = utcnow()
        reopened = False
        if existing is None:
            self._run(
                cursor,
                "insert_instance",
                {
                    "series_id": series_id,
                    "sop_instance_uid": row.sop_instance_uid,
                    "sop_class_uid": row.sop_class_uid,
                    "transfer_syntax_uid": row.transfer_syntax_uid,
                    "instance_number": int_or_none(header_plain(ds, "InstanceNumber")),
                    "path": row.path,
                    "size_bytes": row.size_bytes,
                    "received_at": now,
                },
            )
            self._run(
                cursor,
                "reopen_series",
                {
                    "state": SeriesState.open,
                    "routing_status": RoutingStatus.pending,
                    "routing_note": REOPENED_NOTE,
                    "series_id": series_id,
                    "complete": SeriesState.complete,
                },
            )
            reopened = cursor.rowcount > 0
            if reopened:
                log.info("series %s re-opened by a late instance", series_id)
        self._run(
            cursor,
            "touch_series",
            {"last_received_at": now, "added": 1 if existing is None else 0, "series_id": series_id},
        )
        return IndexedInstance(series_id, duplicate=existing is not None, reopened=reopened)

    def _series_id(self, cursor: Any, row: InstanceRow, ds: Dataset) -> int:
        cached = self._series_ids.get(row.series_instance_uid)
        if cached is not None:
            return cached
        study_id = self._study_id(cursor, row, ds)
        self._run(cursor, "find_series", {"series_instance_uid": row.series_instance_uid})
        found = cursor.fetchone()
        if found is None:
            now = utcnow()
            self._run(
                cursor,
                "insert_series",
                {
                    "study_id": study_id,
                    "series_instance_uid": row.series_instance_uid,
                    "modality": header_text(ds, "Modality"),
                    "series_description": header_text(ds, "SeriesDescription"),
                    "series_number": int_or_none(header_value(ds, "SeriesNumber")),
                    "sop_class_uid": row.sop_class_uid,
                    "called_ae": row.called_ae,
                    "calling_ae": row.calling_ae,
                    "state": SeriesState.open,
                    "first_received_at": now,
                    "last_received_at": now,
                    "routing_status": RoutingStatus.pending,
                    "routing_note": "",
                },
            )
            found = cursor.fetchone()
        series_id = int(found[0])
        self._series_ids[row.series_instance_uid] = series_id
        return series_id

    def _study_id(self, cursor: Any, row: InstanceRow, ds: Dataset) -> int:
        self._run(cursor, "find_study", {"study_instance_uid": row.study_instance_uid})
        found = cursor.fetchone()
        if found is None:
            self._run(
                cursor,
                "insert_study",
                {
                    "study_instance_uid": row.study_instance_uid,
                    "patient_id": header_text(ds, "PatientID"),
                    "patient_name": header_text(ds, "PatientName"),
                    "accession_number": header_text(ds, "AccessionNumber"),
                    "study_date": header_text(ds, "StudyDate"),
                    "study_description": header_text(ds, "StudyDescription"),
                    "created_at": utcnow(),
                },
            )
            found = cursor.fetchone()
        return int(found[0])

    def _run(self, cursor: Any, statement: str, params: Mapping[str, Any]) -> None:
        bound = {k: (self._bind[k](v) if k in self._bind else v) for k, v in params.items()}
        cursor.execute(self._sql[statement], bound)


def header_plain(ds: Dataset, keyword: str) -> object:
    """``ds.get(keyword)`` for a UID or an integer string (UI, IS: ASCII by definition): read
    straight from the received bytes when they are plain single-valued ASCII, which is what a
    conformant sender sends, skipping pydicom's conversion and validation (a few hundred
    microseconds per instance); anything else goes through :func:`header_value`, so an odd value
    is reported exactly as before. Returns the value's text without padding."""
    element = ds.get_item(_TAGS[keyword])
    if isinstance(element, RawDataElement) and element.value is not None:
        raw = bytes(element.value)
        if raw.isascii() and b"\\" not in raw:
            return raw.decode("ascii").rstrip("\0 ")  # as pydicom's UI and IS conversion
    return header_value(ds, keyword)


def header_value(ds: Dataset, keyword: str) -> object:
    """``ds.get(keyword)``; a value pydicom cannot decode is the sender's error, not ours."""
    try:
        return ds.get(keyword, "")
    except PARSE_ERRORS as e:
        raise InvalidInstanceError(f"{keyword} cannot be decoded: {type(e).__name__}: {e}") from e


def header_text(ds: Dataset, keyword: str) -> str:
    value = header_value(ds, keyword)
    return "" if value is None else str(value).strip()


def int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
