"""The instance store refuses a SOP Instance UID already in another study, and reconciles crash
leftovers (temp files, un-indexed instance files) at start-up."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

import hostile_instances as hostile
from radloop.connector.sanity import InstanceLimits, check_part10
from radloop.connector.store import InstanceStore, SopInstanceConflictError, describe
from radloop.core import db
from radloop.core.models import Instance, Study
from radloop.core.settings import load_settings


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    settings = load_settings(data_dir=str(tmp_path / "data"))
    db.upgrade(settings)
    return InstanceStore(settings.data_dir, db.make_engine(settings))


def _put(store: InstanceStore, data: bytes) -> Path:
    ds = check_part10(data, InstanceLimits())
    return store.store(data, describe(ds, ExplicitVRLittleEndian), ds).path


def _indexed(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(i.sop_instance_uid, i.path) for i in s.exec(select(Instance)).all()]


def test_same_sop_instance_in_another_study_is_refused_naming_both(store: InstanceStore) -> None:
    first = hostile.ct_dataset()
    a = _put(store, hostile.part10(first))
    second = hostile.ct_dataset()
    second.SOPInstanceUID = first.SOPInstanceUID  # same instance UID, another study and patient
    second.PatientID = "OTHER"
    with pytest.raises(SopInstanceConflictError) as caught:
        _put(store, hostile.part10(second))
    assert first.StudyInstanceUID in str(caught.value) and second.StudyInstanceUID in str(caught.value)
    assert _indexed(store.engine) == [(first.SOPInstanceUID, str(a.relative_to(store.data_dir)))]
    assert a.is_file()
    assert not store.path_for(describe(second, ExplicitVRLittleEndian)).exists()
    with Session(store.engine) as s:
        assert len(s.exec(select(Study)).all()) == 1
    _put(store, hostile.part10(first))  # a plain resend stays idempotent


def test_reconcile_removes_temp_files_and_indexes_or_removes_unindexed_instances(
    store: InstanceStore, caplog: pytest.LogCaptureFixture
) -> None:
    kept = hostile.ct_dataset()
    kept_path = _put(store, hostile.part10(kept))
    folder = kept_path.parent
    temp = folder / f".{generate_uid()}.dcm.{os.urandom(4).hex()}.tmp"
    temp.write_bytes(b"")  # what ENOSPC left behind
    orphan = hostile.ct_dataset()  # renamed into place, never indexed (kill -9 before commit)
    orphan.StudyInstanceUID, orphan.SeriesInstanceUID = kept.StudyInstanceUID, kept.SeriesInstanceUID
    orphan_path = store.path_for(describe(orphan, ExplicitVRLittleEndian))
    orphan_path.write_bytes(hostile.part10(orphan))
    broken_path = folder / f"{generate_uid()}.dcm"
    broken_path.write_bytes(hostile.short_pixel_data())  # invalid, and not where its UIDs say
    recent = folder / f".{generate_uid()}.dcm.{os.urandom(4).hex()}.tmp"

    old = (kept_path.stat().st_mtime - 3600,) * 2
    for path in (temp, orphan_path, broken_path):
        os.utime(path, old)
    recent.write_bytes(b"")  # may be another process's write in progress

    with caplog.at_level(logging.INFO, logger="radloop.connector.store"):
        report = store.reconcile(min_age_s=60)

    assert (report.temp_files_removed, report.instances_indexed, report.instances_removed) == (1, 1, 1)
    assert report.kept_recent == 1
    assert not temp.exists() and not broken_path.exists() and recent.exists()
    assert orphan_path.is_file() and kept_path.is_file()
    assert sorted(uid for uid, _ in _indexed(store.engine)) == sorted(
        [kept.SOPInstanceUID, orphan.SOPInstanceUID]
    )
    assert "1 temp file(s) removed, 1 un-indexed instance(s) indexed, 1 removed" in caplog.text
    assert store.reconcile(min_age_s=0) == type(report)(1, 0, 0, 0)  # the recent temp file, now
