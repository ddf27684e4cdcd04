"""A store and database holding the real T1 series and AI SEG results on it, for review tests
that need no pipeline run (the end-to-end test in `integration/test_review.py` runs deepbet).

A plain module like `peers`: tests import it as `review_env`. The AI masks are spheres written
by radloop's own SEG writer, so the expected voxels of every edit are known exactly.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from sqlalchemy.engine import Engine
from sqlmodel import select

from radloop.core import db
from radloop.core.db import session_scope
from radloop.core.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
)
from radloop.core.refs import SeriesRef
from radloop.core.settings import Settings, load_settings
from radloop.core.uids import new_uid
from radloop.pipelines.ports import AlgorithmIdentification, Code, LabelMap, Segment, Volume
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
BRAIN = Segment(1, "Brain", Code("91723000", "SCT", "Anatomical Structure"), Code("12738006", "SCT", "Brain"))
MODEL = AlgorithmIdentification(name="deepbet", version="1.0.2")
ACCESSION = "ACC-REVIEW-1"


@dataclass
class ReviewEnv:
    """Settings, engine, the T1 volume and the AI results (result id → AI labels) of a test store."""

    settings: Settings
    engine: Engine
    volume: Volume
    study_uid: str
    results: dict[int, npt.NDArray[np.uint8]]


def sphere(shape: tuple[int, ...], centre: tuple[int, int, int], radius: float) -> npt.NDArray[np.uint8]:
    """A ball of label 1 on a (frames, rows, columns) grid."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    return inside.astype(np.uint8)


def make_review_env(workdir: Path, t1_series_dir: Path, n_results: int = 3, **overrides: Any) -> ReviewEnv:
    """A data dir with the T1 series stored and ``n_results`` AI SEG results (spheres) of one job each."""
    settings = load_settings(None, data_dir=str(workdir / "data"), **overrides)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    first = pydicom.dcmread(next(iter(sorted(t1_series_dir.iterdir()))), stop_before_pixels=True)
    ref = SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    paths = _store_series(settings, engine, t1_series_dir, ref)
    volume = load_volume(paths, ref)
    results = {}
    for k in range(n_results):
        labels = sphere(volume.array.shape, (85, 128 + 4 * k, 128), 40.0 + 2 * k)
        results[_add_result(settings, engine, volume, labels, k)] = labels
    return ReviewEnv(settings, engine, volume, ref.StudyInstanceUID, results)


def _store_series(settings: Settings, engine: Engine, source: Path, ref: SeriesRef) -> list[Path]:
    folder = settings.data_dir / "instances" / ref.StudyInstanceUID / ref.SeriesInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    with session_scope(engine) as s:
        study = Study(
            study_instance_uid=ref.StudyInstanceUID,
            patient_id="d2n_Philips_3T_R571",
            patient_name="Review^Test",
            accession_number=ACCESSION,
            study_date="20210902",
        )
        s.add(study)
        s.flush()
        series = Series(
            study_id=study.id,
            series_instance_uid=ref.SeriesInstanceUID,
            modality="MR",  # type: ignore[arg-type]
            series_description="ADNI_Sag3D MPRAGE",
            state=SeriesState.complete,
            instance_count=170,
        )
        s.add(series)
        s.flush()
        paths = []
        for src in sorted(source.iterdir()):
            ds = pydicom.dcmread(src, stop_before_pixels=True)
            target = folder / f"{ds.SOPInstanceUID}.dcm"
            shutil.copyfile(src, target)
            s.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=str(ds.SOPInstanceUID),  # type: ignore[arg-type]
                    sop_class_uid=str(ds.SOPClassUID),
                    instance_number=int(ds.InstanceNumber),
                    path=str(target.relative_to(settings.data_dir)),
                )
            )
            paths.append(target)
    return paths


def _add_result(
    settings: Settings, engine: Engine, volume: Volume, labels: npt.NDArray[np.uint8], k: int
) -> int:
    """One succeeded job with an AI SEG result (and a sent delivery to 'pacs')."""
    series_uid, sop_uid = new_uid(), new_uid()
    folder = settings.data_dir / "results" / volume.series.StudyInstanceUID / series_uid
    write_seg(
        LabelMap(labels, volume, (BRAIN,), MODEL),
        folder,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=9901,
        series_description="AI brain mask (deepbet)",
    )
    with session_scope(engine) as s:
        series = s.exec(
            select(Series).where(Series.series_instance_uid == volume.series.SeriesInstanceUID)
        ).one()
        job = Job(
            pipeline="brain-extraction",
            pipeline_version="1.0.0",
            series_id=series.id,  # type: ignore[arg-type]
            study_instance_uid=volume.series.StudyInstanceUID,
            series_instance_uid=volume.series.SeriesInstanceUID,
            idempotency_key=f"review-test-{k}",
            state=JobState.succeeded,
        )
        s.add(job)
        s.flush()
        result = Result(
            job_id=job.id,
            kind="SEG",
            sop_class_uid=SEG_STORAGE,
            sop_instance_uid=sop_uid,  # type: ignore[arg-type]
            series_instance_uid=series_uid,
            study_instance_uid=volume.series.StudyInstanceUID,
            path=str((folder / f"{sop_uid}.dcm").relative_to(settings.data_dir)),
        )
        s.add(result)
        s.flush()
        s.add(Delivery(result_id=result.id, destination="pacs", state=DeliveryState.sent))  # type: ignore[arg-type]
        return int(result.id)  # type: ignore[arg-type]


SHADOW_MODEL = AlgorithmIdentification(name="deepbet", version="1.0.2.ft1")


def add_shadow_result(
    env: ReviewEnv,
    result_id: int,
    labels: npt.NDArray[np.uint8],
    model: AlgorithmIdentification = SHADOW_MODEL,
) -> int:
    """A shadow version's SEG (kind ``shadow-seg``, no delivery) in the job of AI result ``result_id``,
    written as `radloop.pipelines.shadow` writes it."""
    from radloop.pipelines.shadow import SHADOW_KIND, SHADOW_SERIES_NUMBER

    series_uid, sop_uid = new_uid(), new_uid()
    folder = env.settings.data_dir / "results" / env.volume.series.StudyInstanceUID / series_uid
    write_seg(
        LabelMap(labels, env.volume, (BRAIN,), model),
        folder,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        series_number=SHADOW_SERIES_NUMBER,
        series_description=f"SHADOW {model.name}@{model.version} (not for clinical use)",
    )
    with session_scope(env.engine) as s:
        ai = s.get(Result, result_id)
        assert ai is not None
        shadow = Result(
            job_id=ai.job_id,
            kind=SHADOW_KIND,
            sop_class_uid=SEG_STORAGE,
            sop_instance_uid=sop_uid,  # type: ignore[arg-type]
            series_instance_uid=series_uid,
            study_instance_uid=env.volume.series.StudyInstanceUID,
            path=str((folder / f"{sop_uid}.dcm").relative_to(env.settings.data_dir)),
        )
        s.add(shadow)
        s.flush()
        return int(shadow.id)  # type: ignore[arg-type]
