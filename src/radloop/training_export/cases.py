"""Which reviewed results an export takes: :class:`ReviewedCase` and :func:`select_cases`.

A *case* is one AI result (a SEG) of a pipeline that a radiologist reviewed, with the series
it was computed from. Its label is the mask the reviewer ended with: the edited SEG for an
``edited`` decision, the AI SEG itself for ``accepted`` (and, only when asked for, for
``rejected``, where it is the mask the reviewer refused). When a result was reviewed more than
once, the latest decision counts.

:class:`ReviewedCase` is the whole input of the rest of the package; :func:`select_cases` is the
one place that reads it from the database (tables ``review``, ``result``, ``job``, ``series``,
``study``, ``instance``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from radloop.core.db import series_instances, session_scope
from radloop.core.models import Job, Result, Review, ReviewDecision, Series, Study
from radloop.core.refs import SeriesRef

log = logging.getLogger(__name__)

DEFAULT_DECISIONS = frozenset({ReviewDecision.accepted, ReviewDecision.edited})
"""Decisions exported unless others are asked for: rejected masks are not training labels."""


@dataclass(frozen=True)
class ReviewedCase:
    """One reviewed AI result, with everything an export needs and nothing it must not write.

    Identifiers (``patient_id``, the UIDs in ``series``, ``ai_sop_instance_uid``, ``reviewer``)
    are only ever used to make pseudonyms. ``final_seg_path`` is the edited SEG (``edited``
    decisions only); ``decided_at`` is when the reviewer decided (UTC).
    """

    review_id: int
    series: SeriesRef
    modality: str
    source_paths: tuple[Path, ...]
    ai_seg_path: Path
    ai_sop_instance_uid: str
    final_seg_path: Path | None
    decision: ReviewDecision
    reviewer: str
    decided_at: datetime
    model_name: str
    model_version: str
    pipeline: str
    pipeline_version: str
    patient_id: str

    def __post_init__(self) -> None:
        _check_sources(self.source_paths)
        _check_final_seg(self.decision, self.final_seg_path)
        if self.decided_at.tzinfo is None:
            raise ValueError("ReviewedCase.decided_at must be timezone-aware (UTC)")
        if not self.ai_sop_instance_uid:
            raise ValueError("ReviewedCase.ai_sop_instance_uid must not be empty")

    @property
    def patient_key(self) -> str:
        """PatientID, else the study: a study without PatientID counts as a patient of its own."""
        return self.patient_id or f"study:{self.series.StudyInstanceUID}"

    @property
    def label_seg_path(self) -> Path:
        """The SEG whose mask becomes the label: the edited one if any, else the AI one."""
        return self.final_seg_path or self.ai_seg_path


def _check_sources(paths: Sequence[Path]) -> None:
    if not paths:
        raise ValueError("ReviewedCase.source_paths must name the source series' files")


def _check_final_seg(decision: ReviewDecision, final_seg_path: Path | None) -> None:
    if decision == ReviewDecision.edited and final_seg_path is None:
        raise ValueError("ReviewedCase.final_seg_path is required when the decision is edited")
    if decision != ReviewDecision.edited and final_seg_path is not None:
        raise ValueError(f"ReviewedCase.final_seg_path must be None when the decision is {decision.value}")


@dataclass(frozen=True)
class CaseSelection:
    """Which cases to take: a pipeline's results whose latest review is on or after ``since``.

    Every such case is returned whatever its decision (:func:`select_cases`): the caller keeps
    those in ``decisions`` and drops from an earlier export the cases re-reviewed since into a
    decision it does not want.
    """

    pipeline: str
    decisions: frozenset[ReviewDecision] = DEFAULT_DECISIONS
    since: datetime | None = None

    def __post_init__(self) -> None:
        if not self.pipeline:
            raise ValueError("CaseSelection.pipeline must name a pipeline")
        if not self.decisions:
            raise ValueError("CaseSelection.decisions must name at least one decision")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("CaseSelection.since must be timezone-aware (UTC)")

    def wants(self, case: ReviewedCase) -> bool:
        """Whether ``case``'s decision is one to export."""
        return case.decision in self.decisions


def select_cases(engine: Engine, data_dir: Path, selection: CaseSelection) -> list[ReviewedCase]:
    """The reviewed SEG results of ``selection.pipeline``, latest review each, oldest decision first.

    Reads ``review`` → ``result`` (the AI SEG) → ``job`` (the pipeline and series) → ``series``
    → ``study`` (PatientID), and the series' ``instance`` files. Paths are made absolute under
    ``data_dir``. Results that are not SEGs are skipped (logged): only a mask can be a label.
    """
    with session_scope(engine) as s:
        rows = s.exec(
            select(Review, Result, Job, Series)
            .join(Result, col(Result.id) == Review.result_id)
            .join(Job, col(Job.id) == Result.job_id)
            .join(Series, col(Series.id) == Job.series_id)
            .where(Job.pipeline == selection.pipeline)
            .order_by(col(Review.ended_at), col(Review.id))
        ).all()
        latest = _latest_per_result(rows)
        cases = [
            _case(s, data_dir, *row)
            for row in latest
            if selection.since is None or row[0].ended_at >= selection.since
        ]
    return [c for c in cases if c is not None]


def _latest_per_result(rows: Iterable[Any]) -> list[Any]:
    """The last row per AI result (rows come ordered by decision time), in decision-time order."""
    by_result: dict[int, Any] = {}
    for row in rows:
        by_result.pop(row[1].id, None)  # re-insert: dict order follows the latest decision
        by_result[row[1].id] = row
    return list(by_result.values())


def _case(
    s: Session, data_dir: Path, review: Review, result: Result, job: Job, series: Series
) -> ReviewedCase | None:
    """The :class:`ReviewedCase` of one review row, or None when it cannot be one (logged)."""
    study = s.get(Study, series.study_id)
    if study is None:
        log.warning("review %s: the source series has no study row: skipped", review.id)
        return None
    if result.kind != "SEG":
        log.warning("review %s is about a %s result, not a SEG: not exportable", review.id, result.kind)
        return None
    final = _edited_seg_path(s, data_dir, review)
    if review.decision == ReviewDecision.edited and final is None:
        log.warning("review %s is 'edited' but names no edited result: skipped", review.id)
        return None
    instances = series_instances(s, series.id)  # type: ignore[arg-type]
    if not instances:
        log.warning("review %s: the source series has no stored instances: skipped", review.id)
        return None
    return ReviewedCase(
        review_id=review.id or 0,
        series=SeriesRef(study.study_instance_uid, series.series_instance_uid),
        modality=series.modality,
        source_paths=tuple(data_dir / i.path for i in instances),
        ai_seg_path=data_dir / result.path,
        ai_sop_instance_uid=result.sop_instance_uid,
        final_seg_path=final if review.decision == ReviewDecision.edited else None,
        decision=ReviewDecision(review.decision),
        reviewer=review.reviewer,
        decided_at=review.ended_at,
        model_name=review.model_name,
        model_version=review.model_version,
        pipeline=job.pipeline,
        pipeline_version=review.pipeline_version or job.pipeline_version,
        patient_id=study.patient_id,
    )


def _edited_seg_path(s: Session, data_dir: Path, review: Review) -> Path | None:
    """The edited SEG's file, when the review names an edited result."""
    if review.edited_result_id is None:
        return None
    edited = s.get(Result, review.edited_result_id)
    return None if edited is None else data_dir / edited.path
