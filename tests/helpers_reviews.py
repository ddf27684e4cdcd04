"""Reviewed AI results on real data, as radloop's own tables hold them (for training-export tests).

A plain module like `peers`: tests import it as `helpers_reviews`. It ingests DICOM series
through radloop's `InstanceStore`, writes AI SEGs with radloop's SEG writer (a `job` and a
`result` row each, as a pipeline run leaves them), and records review decisions through the
review app's own functions (`feedback.edits.store_edited_seg`,
`feedback.decisions.record_decision`). Synthetic patients are slabs of the real T1 series
copied with new UIDs, patient name and ID (pydicom), so that a dataset has several patients
with real anatomy and real geometry.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy.engine import Engine

from radloop.connector.store import InstanceStore, describe
from radloop.core.db import session_scope
from radloop.core.models import Job, JobState, Result, ReviewDecision
from radloop.core.refs import SeriesRef
from radloop.core.settings import Settings
from radloop.feedback.decisions import Decision, record_decision
from radloop.feedback.edits import store_edited_seg
from radloop.pipelines.operators.brain_extraction import BRAIN_SEGMENT
from radloop.pipelines.ports import AlgorithmIdentification, LabelMap, Volume
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg

PIPELINE = "brain-extraction"
DEEPBET = AlgorithmIdentification(name="deepbet", version="1.0.2")


@dataclass(frozen=True)
class StoredSeries:
    """A series as the store holds it, with its identifiers (to look for in exports)."""

    series_id: int
    volume: Volume
    patient_id: str
    patient_name: str
    study_date: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]

    @property
    def ref(self) -> SeriesRef:
        return self.volume.series

    def identifiers(self) -> list[str]:
        """What identifies this series' patient, study and images, to look for in an export.

        Names, IDs, the study date and the study/series/frame-of-reference UIDs; for the image
        UIDs, their common root (e.g. the scanner maker's ``1.3.46.670589.…``), which finds any
        UID of that root, not only these ones.
        """
        root = os.path.commonprefix(list(self.sop_instance_uids))
        assert len(root) >= 20, f"the image UIDs share too short a root to look for: {root!r}"
        return [
            self.patient_id,
            self.patient_name,
            self.study_date,
            self.ref.StudyInstanceUID,
            self.ref.SeriesInstanceUID,
            self.frame_of_reference_uid,
            root,
        ]


def copy_as_patient(
    files: Sequence[Path],
    dst_dir: Path,
    patient_id: str,
    patient_name: str,
    study_date: str,
) -> tuple[list[Path], dict[str, str]]:
    """Copies of ``files`` as a new patient's new study and series (new UIDs, name, ID, date).

    Returns the files and, for each new SOP Instance UID, the one it was copied from.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out, origin = [], {}
    for path in files:
        ds = pydicom.dcmread(path)
        sop = generate_uid()
        origin[sop] = str(ds.SOPInstanceUID)
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.StudyDate = ds.SeriesDate = study_date
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        target = dst_dir / f"{sop}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out, origin


def ingest(store: InstanceStore, files: Sequence[Path]) -> StoredSeries:
    """Store ``files`` (one series) the way the SCP does; return the series as stored."""
    series_id = 0
    for path in files:
        encoded = Path(path).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(encoded))
        series_id = store.store(encoded, describe(ds, str(ds.file_meta.TransferSyntaxUID)), ds).series_id
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    stored = sorted((store.root / str(first.StudyInstanceUID) / str(first.SeriesInstanceUID)).glob("*.dcm"))
    volume = load_volume(stored, SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID)))
    return StoredSeries(
        series_id=series_id,
        volume=volume,
        patient_id=str(first.PatientID),
        patient_name=str(first.PatientName),
        study_date=str(first.StudyDate),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=tuple(f.sop_instance_uid for f in volume.source_frames),
    )


def add_job(engine: Engine, series: StoredSeries, key: str) -> int:
    """A succeeded job of the brain pipeline on ``series``."""
    with session_scope(engine) as s:
        job = Job(
            pipeline=PIPELINE,
            pipeline_version="1.0.0",
            series_id=series.series_id,
            study_instance_uid=series.ref.StudyInstanceUID,
            series_instance_uid=series.ref.SeriesInstanceUID,
            idempotency_key=key,
            state=JobState.succeeded,
        )
        s.add(job)
        s.flush()
        return int(job.id or 0)


def add_ai_result(
    engine: Engine, data_dir: Path, job_id: int, series: StoredSeries, mask: npt.NDArray[np.bool_]
) -> int:
    """Write ``mask`` as the pipeline's AI SEG into ``data_dir/results`` and add its result row."""
    labelmap = LabelMap(mask.astype(np.uint8), series.volume, (BRAIN_SEGMENT,), DEEPBET)
    seg_series, sop = generate_uid(), generate_uid()
    folder = data_dir / "results" / series.ref.StudyInstanceUID / seg_series
    path = write_seg(
        labelmap,
        folder,
        series_instance_uid=seg_series,
        sop_instance_uid=sop,
        series_number=9901,
        series_description="AI brain mask (deepbet)",
    )
    with session_scope(engine) as s:
        row = Result(
            job_id=job_id,
            kind="SEG",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
            sop_instance_uid=sop,
            series_instance_uid=seg_series,
            study_instance_uid=series.ref.StudyInstanceUID,
            path=str(path.relative_to(data_dir)),
        )
        s.add(row)
        s.flush()
        return int(row.id or 0)


def review(
    settings: Settings,
    engine: Engine,
    ai_result_id: int,
    series: StoredSeries,
    decision: ReviewDecision,
    reviewer: str,
    decided_at: datetime,
    final_mask: npt.NDArray[np.bool_] | None = None,
) -> int:
    """A decision recorded the way the review app records it (feedback's own functions).

    An edit stores ``final_mask`` as an edited SEG (``store_edited_seg``); the decision row is
    written by ``record_decision``, then dated ``decided_at`` (the app dates it "now").
    """
    with session_scope(engine) as s:
        ai_result = s.get(Result, ai_result_id)
        assert ai_result is not None
        edited_id = None
        if decision == ReviewDecision.edited:
            assert final_mask is not None
            labelmap = LabelMap(final_mask.astype(np.uint8), series.volume, (BRAIN_SEGMENT,), DEEPBET)
            ai_seg = pydicom.dcmread(settings.data_dir / ai_result.path, stop_before_pixels=True)
            edited_id = store_edited_seg(
                settings, s, ai_result, labelmap, ai_seg=ai_seg, reviewer=reviewer
            ).id
        row = record_decision(
            s,
            Decision(
                result_id=ai_result_id,
                reviewer=reviewer,
                decision=decision,
                started_at=decided_at - timedelta(minutes=3),
                model_name=DEEPBET.name,
                model_version=DEEPBET.version,
                reason="mask covers the skull" if decision == ReviewDecision.rejected else "",
                edited_result_id=edited_id,
            ),
        )
        row.ended_at = decided_at
        s.add(row)
        return int(row.id or 0)


def slab_mask(
    full: StoredSeries, full_mask: npt.NDArray[np.bool_], part: StoredSeries, origin: dict[str, str]
) -> npt.NDArray[np.bool_]:
    """The full series' mask on a slab copied from it (``origin``: copied SOP UID → original one)."""
    index = {uid: k for k, uid in enumerate(full.sop_instance_uids)}
    return full_mask[[index[origin[f.sop_instance_uid]] for f in part.volume.source_frames]]


def edit(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """What a reviewer's edit might do: cut off the top rows of the mask and add a small block."""
    out = mask.copy()
    out[:, :95, :] = False
    out[:, 150:156, 100:110] = True
    return out
