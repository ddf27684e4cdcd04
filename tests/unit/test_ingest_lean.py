"""The lean receive path (issue 13): the File Meta Information encoded directly, parts written with
one writev, and ``commit`` durability's group fsync."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from sqlmodel import Session, select

from radloop.connector.ingest import PREAMBLE, AssociationTracker, part10_prefix
from radloop.connector.store import GroupSync, InstanceStore, describe
from radloop.core import db
from radloop.core.errors import InvalidInstanceError
from radloop.core.models import Instance
from radloop.core.settings import load_settings


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.90"])
@pytest.mark.parametrize(
    "sop_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.59097058312103537507515970525043237759"]
)
def test_part10_prefix_is_what_pydicom_writes(ts: str, sop_uid: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    expected = io.BytesIO()
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert part10_prefix(CTImageStorage, sop_uid, ts) == PREAMBLE + b"DICM" + expected.getvalue()


def test_part10_prefix_refuses_a_non_ascii_uid() -> None:
    with pytest.raises(InvalidInstanceError, match="not ASCII"):
        part10_prefix(CTImageStorage, "1.2.\u00e9", ExplicitVRLittleEndian)


def _instance() -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "P1"
    body = io.BytesIO()
    pydicom.dcmwrite(body, ds, implicit_vr=False, little_endian=True)  # type: ignore[call-arg]
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta = meta
    return ds, body.getvalue()


@pytest.mark.parametrize("durability", ["fsync", "commit"])
def test_parts_are_written_as_one_file_and_indexed(tmp_path: Path, durability: str) -> None:
    settings = load_settings(data_dir=str(tmp_path / "data"))
    db.upgrade(settings)
    engine = db.make_engine(settings)
    store = InstanceStore(settings.data_dir, engine, durability=durability, group_fsync_ms=1)  # type: ignore[arg-type]
    try:
        ds, body = _instance()
        prefix = part10_prefix(CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        stored = store.store([prefix, memoryview(body)], describe(ds, ExplicitVRLittleEndian), ds)
        assert store.sync_barrier(30)
        assert stored.path.read_bytes() == prefix + body
        assert pydicom.dcmread(stored.path).SOPInstanceUID == ds.SOPInstanceUID
        with Session(engine) as s:
            (row,) = s.exec(select(Instance)).all()
            assert row.size_bytes == len(prefix) + len(body)
    finally:
        store.close()


def test_group_sync_barrier_waits_for_the_fsync_of_what_was_written(tmp_path: Path) -> None:
    group = GroupSync(interval_s=0.05)
    try:
        files = []
        for i in range(20):
            f = tmp_path / f"f{i}"
            f.write_bytes(os.urandom(64))
            group.add(f, [])
            files.append(f)
        (tmp_path / "f3").unlink()  # gone before its group: skipped, not an error
        assert group.barrier(30)
        assert group.barrier(30)  # nothing new: at once
    finally:
        group.stop()


def test_tracker_completes_a_series_when_its_last_carrier_is_released() -> None:
    completed: list[tuple[set[int], str]] = []
    tracker = AssociationTracker(lambda ids, ae: completed.append((ids, ae)))
    for key in ("1:a", "1:b", "2:c"):  # three associations (two processes) into series 7
        tracker.carrying(key, 7)
    tracker.carrying("2:c", 8)  # one of them also into series 8
    tracker.ended("1:a", [7], "RADLOOP", released=True)
    assert completed == []  # two still send into 7
    tracker.ended("2:c", [7, 8], "RADLOOP", released=True)
    assert completed == [({8}, "RADLOOP")]  # 8 had one carrier; 7 still has 1:b
    tracker.ended("1:b", [7], "RADLOOP", released=True)
    assert completed == [({8}, "RADLOOP"), ({7}, "RADLOOP")]


def test_tracker_leaves_a_series_whose_last_carrier_aborted_to_the_quiet_period() -> None:
    completed: list[tuple[set[int], str]] = []
    tracker = AssociationTracker(lambda ids, ae: completed.append((ids, ae)))
    tracker.carrying("1:a", 7)
    tracker.carrying("1:b", 7)
    tracker.ended("1:a", [7], "RADLOOP", released=True)
    tracker.ended("1:b", [7], "RADLOOP", released=False)
    assert completed == []
