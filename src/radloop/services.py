"""Service functions shared by the CLI and the HTTP API: queries and user actions on studies,
jobs and deliveries. They take an engine, return plain dicts, and raise radloop errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from radloop.core import jobs as job_states
from radloop.core.db import session_scope
from radloop.core.errors import RadloopError
from radloop.core.models import Delivery, DeliveryState, Job, JobState, JobStep, Result, Series, Study, utcnow


class NotFoundError(RadloopError):
    """The named row does not exist."""


def _row(obj: Any) -> dict[str, Any]:
    out = obj.model_dump()
    for k, v in out.items():
        if hasattr(v, "isoformat"):
            out[k] = v.isoformat()
        elif hasattr(v, "value"):
            out[k] = v.value
    return out


def list_studies(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """Studies, newest first, each with its series (state, instance count, routing note)."""
    with session_scope(engine) as s:
        studies = s.exec(select(Study).order_by(col(Study.id).desc()).limit(limit)).all()
        out = []
        for st in studies:
            row = _row(st)
            series = s.exec(select(Series).where(Series.study_id == st.id).order_by(col(Series.id))).all()
            row["series"] = [_row(x) for x in series]
            out.append(row)
        return out


def list_jobs(
    engine: Engine, state: str | None = None, pipeline: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally filtered by state and pipeline."""
    with session_scope(engine) as s:
        q = select(Job).order_by(col(Job.id).desc()).limit(limit)
        if state:
            q = q.where(Job.state == JobState(state))
        if pipeline:
            q = q.where(Job.pipeline == pipeline)
        return [_row(j) for j in s.exec(q).all()]


def get_job(engine: Engine, job_id: int) -> dict[str, Any]:
    """One job with its operator steps (timings, logs) and results."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        row = _row(job)
        steps = s.exec(select(JobStep).where(JobStep.job_id == job_id).order_by(col(JobStep.id))).all()
        row["steps"] = [_row(x) for x in steps]
        results = s.exec(select(Result).where(Result.job_id == job_id)).all()
        row["results"] = [_row(r) for r in results]
        return row


def retry_job(engine: Engine, job_id: int, budget: int) -> dict[str, Any]:
    """Re-queue a finished (failed, cancelled or succeeded) job now."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        job_states.retry(s, job, budget)
        return _row(job)


def cancel_job(engine: Engine, job_id: int) -> dict[str, Any]:
    """Cancel a queued or running job."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        job_states.cancel(s, job)
        return _row(job)


def list_deliveries(engine: Engine, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Outbox rows, newest first, with the result they carry."""
    with session_scope(engine) as s:
        q = select(Delivery, Result).join(Result, col(Result.id) == Delivery.result_id)
        if state:
            q = q.where(Delivery.state == DeliveryState(state))
        rows = s.exec(q.order_by(col(Delivery.id).desc()).limit(limit)).all()
        return [{**_row(d), "kind": r.kind, "sop_instance_uid": r.sop_instance_uid, "job_id": r.job_id} for d, r in rows]


def retry_delivery(engine: Engine, delivery_id: int) -> dict[str, Any]:
    """Send a failed or dismissed delivery again now."""
    with session_scope(engine) as s:
        d = s.get(Delivery, delivery_id)
        if d is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if d.state == DeliveryState.sent:
            raise RadloopError(f"delivery {delivery_id} was already sent")
        d.state, d.next_attempt_at = DeliveryState.pending, utcnow()
        s.add(d)
        return _row(d)


def dismiss_delivery(engine: Engine, delivery_id: int) -> dict[str, Any]:
    """Stop retrying a delivery (it stays listed as dismissed)."""
    with session_scope(engine) as s:
        d = s.get(Delivery, delivery_id)
        if d is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        if d.state == DeliveryState.sent:
            raise RadloopError(f"delivery {delivery_id} was already sent")
        d.state = DeliveryState.dismissed
        s.add(d)
        return _row(d)


def counts(engine: Engine) -> dict[str, int]:
    """Totals for a status line: studies, series, jobs by state, pending deliveries."""
    with session_scope(engine) as s:
        out = {
            "studies": s.exec(select(func.count()).select_from(Study)).one(),
            "series": s.exec(select(func.count()).select_from(Series)).one(),
        }
        for state in JobState:
            out[f"jobs_{state.value}"] = s.exec(select(func.count()).select_from(Job).where(Job.state == state)).one()
        out["deliveries_pending"] = s.exec(
            select(func.count()).select_from(Delivery).where(Delivery.state == DeliveryState.pending)
        ).one()
        return out
