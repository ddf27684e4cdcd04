"""Review decisions: one ``review`` row per decision, audited in the same transaction; the
worklist of AI results nobody has decided on yet; and the list of decisions made."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from radloop.core import audit
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError, RequestError
from radloop.core.models import Job, Result, Review, ReviewDecision, Series, Study, utcnow
from radloop.feedback.agreement import Agreement

REVIEWABLE_KIND = "SEG"
"""Kind of result a radiologist reviews in the browser (a DICOM Segmentation)."""

MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class Decision:
    """A decision to record: who decided what on which result, and how the masks agree."""

    result_id: int
    reviewer: str
    decision: ReviewDecision
    started_at: datetime
    model_name: str
    model_version: str
    session_id: str = ""
    reason: str = ""
    agreement: Agreement | None = None
    edited_result_id: int | None = None

    def __post_init__(self) -> None:
        _check_reason(self.decision, self.reason)
        _check_edit(self.decision, self.agreement, self.edited_result_id)


def _check_reason(decision: ReviewDecision, reason: str) -> None:
    if decision == ReviewDecision.rejected and not reason.strip():
        raise RequestError("a rejection needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise RequestError(f"reason must be at most {MAX_REASON_CHARS} characters")


def _check_edit(decision: ReviewDecision, agreement: Agreement | None, edited_result_id: int | None) -> None:
    is_edit = decision == ReviewDecision.edited
    if is_edit != (edited_result_id is not None):
        raise ValueError("edited_result_id is set exactly when the decision is 'edited'")
    if decision == ReviewDecision.rejected and agreement is not None:
        raise ValueError("a rejected result has no final mask to compare with")


def record_decision(session: Session, decision: Decision) -> Review:
    """Add the ``review`` row and its audit row; returns the review (flushed, ``id`` set)."""
    result = session.get(Result, decision.result_id)
    if result is None:
        raise NotFoundError(f"no result {decision.result_id}")
    job = session.get(Job, result.job_id)
    measured = decision.agreement
    review = Review(
        result_id=decision.result_id,
        reviewer=decision.reviewer,
        decision=decision.decision,
        reason=decision.reason.strip(),
        started_at=decision.started_at,
        ended_at=utcnow(),
        model_name=decision.model_name,
        model_version=decision.model_version,
        pipeline=job.pipeline if job else "",
        pipeline_version=job.pipeline_version if job else "",
        edited_result_id=decision.edited_result_id,
        session_id=decision.session_id,
        dice=measured.dice if measured else None,
        volume_ai_ml=measured.volume_ai_ml if measured else None,
        volume_final_ml=measured.volume_final_ml if measured else None,
        added_voxels=measured.added_voxels if measured else None,
        removed_voxels=measured.removed_voxels if measured else None,
    )
    session.add(review)
    session.flush()
    audit.record(
        session,
        decision.reviewer,
        f"review.{decision.decision.value}",
        f"result:{decision.result_id}",
        {
            "review_id": review.id,
            "session": decision.session_id,
            "edited_result_id": decision.edited_result_id,
            "dice": review.dice,
        },
    )
    return review


def review_row(review: Review) -> dict[str, Any]:
    """A review as plain JSON-able values, with the derived volume change."""
    row: dict[str, Any] = review.model_dump(mode="json")
    change = None
    if review.volume_ai_ml is not None and review.volume_final_ml is not None:
        change = review.volume_final_ml - review.volume_ai_ml
    row["volume_change_ml"] = change
    return row


def list_reviews(engine: Engine, *, result_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Decisions, newest first (optionally those on one result)."""
    with session_scope(engine) as s:
        query = select(Review).order_by(col(Review.id).desc()).limit(limit)
        if result_id is not None:
            query = query.where(Review.result_id == result_id)
        return [review_row(r) for r in s.exec(query).all()]


def edited_result_ids(session: Session) -> set[int]:
    """Result rows that are edited SEGs made by reviewers (not AI results to review)."""
    ids = session.exec(select(Review.edited_result_id).where(col(Review.edited_result_id).is_not(None))).all()
    return {int(i) for i in ids if i is not None}


def is_edited_result(session: Session, result_id: int) -> bool:
    """Whether ``result_id`` is an edited SEG (made by a reviewer)."""
    found = session.exec(select(Review.id).where(Review.edited_result_id == result_id)).first()
    return found is not None


def pending_results(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    """AI SEG results with no decision yet, newest first, with their study and series."""
    with session_scope(engine) as s:
        decided = select(Review.result_id)
        edited = select(Review.edited_result_id).where(col(Review.edited_result_id).is_not(None))
        query = (
            select(Result, Job, Series, Study)
            .join(Job, col(Job.id) == Result.job_id)
            .join(Series, col(Series.id) == Job.series_id)
            .join(Study, col(Study.id) == Series.study_id)
            .where(
                Result.kind == REVIEWABLE_KIND, col(Result.id).not_in(decided), col(Result.id).not_in(edited)
            )
            .order_by(col(Result.id).desc())
            .limit(limit)
        )
        return [_worklist_row(*row) for row in s.exec(query).all()]


def _worklist_row(result: Result, job: Job, series: Series, study: Study) -> dict[str, Any]:
    return {
        "result_id": result.id,
        "created_at": result.created_at.isoformat(),
        "pipeline": job.pipeline,
        "pipeline_version": job.pipeline_version,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_date": study.study_date,
        "series_description": series.series_description,
        "modality": series.modality,
    }
