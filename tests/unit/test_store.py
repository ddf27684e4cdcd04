"""The instance store: durable files first, then the index; duplicates idempotent; late instances re-open."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from radloop.connector.assembler import Assembler
from radloop.connector.store import InstanceStore, describe
from radloop.core import db
from radloop.core.errors import DiskFullError, InvalidInstanceError
from radloop.core.models import Instance, Job, RoutingStatus, Series, SeriesState
from radloop.core.settings import Settings, load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry

STUDY, SERIES = generate_uid(), generate_uid()


def _dataset(sop_uid: str | None = None, modality: str = "MR") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "P1", 1
    return ds


def _encode(ds: Dataset, tmp_path: Path) -> bytes:
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, Engine, InstanceStore]:
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        dicom={"listeners": [{"ae_title": "RADLOOP", "quiet_period_s": 0.01}]},
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    return settings, engine, InstanceStore(settings.data_dir, engine)


def _store(store: InstanceStore, ds: Dataset, tmp_path: Path) -> object:
    return store.store(_encode(ds, tmp_path), describe(ds, ExplicitVRLittleEndian, "RADLOOP", "SCU"), ds)


def test_store_writes_file_then_index_and_duplicates_are_idempotent(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _settings, engine, store = setup
    ds = _dataset()
    first = _store(store, ds, tmp_path)
    again = _store(store, ds, tmp_path)
    assert not first.duplicate and again.duplicate  # type: ignore[attr-defined]
    path = first.path  # type: ignore[attr-defined]
    assert path == store.root / STUDY / SERIES / f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind
    with Session(engine) as s:
        assert len(s.exec(select(Instance)).all()) == 1
        assert s.exec(select(Series)).one().instance_count == 1


def test_invalid_uids_are_refused(setup) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset()
    ds.SOPInstanceUID = ""
    with pytest.raises(InvalidInstanceError, match="SOPInstanceUID is empty"):
        describe(ds, ExplicitVRLittleEndian)
    ds.SOPInstanceUID = "1.2.abc"
    with pytest.raises(InvalidInstanceError, match="not a valid UID"):
        describe(ds, ExplicitVRLittleEndian)


def test_disk_floor_refuses_new_data(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, engine, _ = setup
    full = InstanceStore(settings.data_dir, engine, min_free_bytes=1 << 62)
    with pytest.raises(DiskFullError, match="below the floor"):
        _store(full, _dataset(), tmp_path)


def test_late_instance_reopens_a_complete_series_and_routes_again(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, engine, store = setup
    catalog = PipelineCatalog.load(settings, builtin_registry())
    assembler = Assembler(settings, engine, catalog)
    stored = _store(store, _dataset(), tmp_path)
    assert assembler.complete(stored.series_id, reason="test")  # type: ignore[attr-defined]
    assert not assembler.complete(stored.series_id, reason="twice")  # type: ignore[attr-defined]
    with Session(engine) as s:
        series = s.exec(select(Series)).one()
        assert series.state == SeriesState.complete and series.revision == 1
        assert series.routing_status == RoutingStatus.unmatched  # 1 MR instance < 64 required
        assert "fewer than the 64 required" in series.routing_note
    _store(store, _dataset(), tmp_path)  # a late, new instance
    with Session(engine) as s:
        series = s.exec(select(Series)).one()
        assert series.state == SeriesState.open and series.instance_count == 2
    assert assembler.tick() in (0, 1)
    assembler.complete(stored.series_id, reason="test")  # type: ignore[attr-defined]
    with Session(engine) as s:
        assert s.exec(select(Series)).one().revision == 2
        assert s.exec(select(Job)).all() == []


def test_resent_duplicate_does_not_reopen(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, engine, store = setup
    assembler = Assembler(settings, engine, PipelineCatalog.load(settings, builtin_registry()))
    ds = _dataset()
    stored = _store(store, ds, tmp_path)
    assembler.complete(stored.series_id, reason="test")  # type: ignore[attr-defined]
    _store(store, ds, tmp_path)
    with Session(engine) as s:
        assert s.exec(select(Series)).one().state == SeriesState.complete


def test_index_rows_are_the_rows_sqlalchemy_writes(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The index writes on the driver's cursor (connector/instance_index): timestamps and enums must
    land in the form SQLAlchemy's column types write and read back (SQLite: naive text, enum names)."""
    import re

    from sqlalchemy import text

    _settings, engine, store = setup
    _store(store, _dataset(), tmp_path)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT i.received_at, s.first_received_at, s.state, s.routing_status FROM instance i "
                "JOIN series s ON s.id = i.series_id"
            )
        ).one()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
    assert stamp.match(row[0]) and stamp.match(row[1]), row
    assert (row[2], row[3]) == ("open", "pending")
    with Session(engine) as s:
        series = s.exec(select(Series)).one()
        assert series.state is SeriesState.open and series.routing_status is RoutingStatus.pending
        assert series.first_received_at.year >= 2024


def test_plain_header_values_read_from_bytes_equal_pydicoms(tmp_path: Path) -> None:
    """describe() reads UIDs and InstanceNumber straight from the received bytes (instance_index.
    header_plain): the same text as pydicom's conversion, and odd values still go through pydicom."""
    import io

    from radloop.connector.instance_index import header_plain, header_value

    ds = _dataset(sop_uid="1.2.3.44")  # even: no padding; the study/series UIDs are odd or even
    ds.InstanceNumber = " 7"
    encoded = _encode(ds, tmp_path)
    raw = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    converted = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ):
        assert str(header_plain(raw, keyword)).strip() == str(header_value(converted, keyword)).strip()
    ds.SOPInstanceUID = ["1.2.3", "1.2.4"]  # multi-valued: pydicom's conversion, then refused
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3")
    odd = pydicom.dcmread(io.BytesIO(_encode(ds, tmp_path)), stop_before_pixels=True)
    with pytest.raises(InvalidInstanceError, match="SOPInstanceUID is"):
        describe(odd, ExplicitVRLittleEndian)


def test_a_database_error_is_a_store_error(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The index's driver errors reach the SCP as a StoreError (C-STORE 0xA700, retry later), not as
    an unforeseen exception."""
    from sqlalchemy import text

    from radloop.core.errors import StoreError

    _settings, engine, store = setup
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE instance"))
    with pytest.raises(StoreError, match="cannot index SOP Instance"):
        _store(store, _dataset(), tmp_path)
