"""The job state machine and queue operations, as row transitions.

``queued → running → succeeded | failed | cancelled``; a failed attempt with attempts left goes
back to ``queued`` with ``next_attempt_at`` pushed out (exponential backoff). Every transition is
one conditional UPDATE, so two dispatchers (or a restarted one) never both own a job, and a job
whose lease expired (its worker died) is re-queued by :func:`requeue_expired`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, select

from radloop.core.db import session_scope
from radloop.core.errors import RadloopError
from radloop.core.models import Job, JobState, utcnow

log = logging.getLogger(__name__)

_ALLOWED: dict[JobState, set[JobState]] = {
    JobState.queued: {JobState.running, JobState.cancelled},
    JobState.running: {JobState.succeeded, JobState.failed, JobState.queued, JobState.cancelled},
    JobState.succeeded: {JobState.queued},  # explicit user retry
    JobState.failed: {JobState.queued},
    JobState.cancelled: {JobState.queued},
}


class JobTransitionError(RadloopError):
    """A requested job transition is not allowed from the job's current state."""


def check_transition(current: JobState, target: JobState) -> None:
    """Raise :class:`JobTransitionError` unless ``current → target`` is a legal transition."""
    if target not in _ALLOWED[current]:
        raise JobTransitionError(f"a {current.value} job cannot become {target.value}")


def backoff_seconds(attempts: int, base_s: float, cap_s: float) -> float:
    """Delay before attempt ``attempts + 1``: base · 2^(attempts-1), capped."""
    return float(min(cap_s, base_s * (2 ** max(0, attempts - 1))))


def claim_next(engine: Engine, worker_id: str, lease_s: float) -> Job | None:
    """Atomically take the most urgent due job: it becomes ``running`` with a lease; None if none is due."""
    now = utcnow()
    with session_scope(engine) as s:
        candidates = s.exec(
            select(Job.id)
            .where(Job.state == JobState.queued, Job.next_attempt_at <= now)
            .order_by(col(Job.priority_rank), col(Job.created_at), col(Job.id))
            .limit(5)
        ).all()
        for job_id in candidates:
            res: CursorResult[object] = s.execute(  # type: ignore[assignment]
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state) == JobState.queued)
                .values(**_running(now, lease_s, worker_id))
            )
            if res.rowcount == 1:
                s.commit()
                return s.get(Job, job_id)
    return None


def _running(now: datetime, lease_s: float, worker_id: str) -> dict[str, Any]:
    """The columns a claim sets: running, one more attempt, leased to ``worker_id``."""
    return {
        "state": JobState.running,
        "attempts": Job.attempts + 1,
        "lease_until": now + timedelta(seconds=lease_s),
        "leased_by": worker_id,
        "started_at": now,
        "error": "",
    }


def claim(engine: Engine, job_id: int, worker_id: str, lease_s: float) -> Job | None:
    """Take one named job if it is queued and due (celery executor: the message named it).

    None when the job is running elsewhere, finished, cancelled, not yet due or gone: a duplicate
    or redelivered message then does nothing.
    """
    now = utcnow()
    with session_scope(engine) as s:
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.queued, col(Job.next_attempt_at) <= now)
            .values(**_running(now, lease_s, worker_id))
        )
        if res.rowcount != 1:
            return None
        s.commit()
        return s.get(Job, job_id)


def to_publish(engine: Engine, republish_after_s: float, limit: int = 200) -> list[Job]:
    """Queued, due jobs whose id must go to the broker: never published, published before they were
    last re-queued, or published ``republish_after_s`` ago and still not claimed (a lost message)."""
    now = utcnow()
    stale = now - timedelta(seconds=republish_after_s)
    with session_scope(engine) as s:
        return list(
            s.exec(
                select(Job)
                .where(Job.state == JobState.queued, col(Job.next_attempt_at) <= now)
                .where(
                    col(Job.published_at).is_(None)
                    | (col(Job.published_at) < col(Job.next_attempt_at))
                    | (col(Job.published_at) < stale)
                )
                .order_by(col(Job.priority_rank), col(Job.created_at), col(Job.id))
                .limit(limit)
            ).all()
        )


def mark_published(engine: Engine, job: Job) -> bool:
    """Take the right to publish ``job`` (as read by :func:`to_publish`): one conditional UPDATE, so
    of several publishers (ingest hosts) only one sends it."""
    previous = (
        col(Job.published_at).is_(None)
        if job.published_at is None
        else col(Job.published_at) == job.published_at
    )
    with session_scope(engine) as s:
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Job)
            .where(col(Job.id) == job.id, col(Job.state) == JobState.queued, previous)
            .values(published_at=utcnow())
        )
        return res.rowcount == 1


def unmark_published(engine: Engine, job_id: int) -> None:
    """The broker refused or could not be reached: publish this job again at the next tick."""
    with session_scope(engine) as s:
        s.execute(update(Job).where(col(Job.id) == job_id).values(published_at=None))


def renew_lease(engine: Engine, job_id: int, worker_id: str, lease_s: float) -> bool:
    """Extend a running job's lease; False if the job is no longer ours (cancelled or re-queued)."""
    with session_scope(engine) as s:
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.running, col(Job.leased_by) == worker_id)
            .values(lease_until=utcnow() + timedelta(seconds=lease_s))
        )
        return res.rowcount == 1


def finish(engine: Engine, job_id: int, worker_id: str) -> bool:
    """Mark a running job we own as succeeded."""
    return _finish_as(engine, job_id, worker_id, JobState.succeeded, "")


def fail_attempt(
    engine: Engine, job_id: int, worker_id: str, error: str, *, transient: bool, base_s: float, cap_s: float
) -> JobState | None:
    """Record a failed attempt: re-queue with backoff if transient and attempts remain, else fail.

    Returns the new state, or None if the job was no longer ours.
    """
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.running or job.leased_by != worker_id:
            return None
        if transient and job.attempts < job.max_attempts:
            delay = backoff_seconds(job.attempts, base_s, cap_s)
            job.state = JobState.queued
            job.next_attempt_at = utcnow() + timedelta(seconds=delay)
            job.error = f"attempt {job.attempts}/{job.max_attempts} failed, retry in {delay:.0f} s: {error}"
        else:
            job.state = JobState.failed
            job.finished_at = utcnow()
            job.error = error
        job.lease_until = None
        s.add(job)
        return job.state


def _finish_as(engine: Engine, job_id: int, worker_id: str, state: JobState, error: str) -> bool:
    with session_scope(engine) as s:
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.running, col(Job.leased_by) == worker_id)
            .values(state=state, finished_at=utcnow(), lease_until=None, error=error)
        )
        return res.rowcount == 1


def requeue_expired(engine: Engine) -> list[int]:
    """Re-queue running jobs whose lease expired (their worker died); returns their ids."""
    now = utcnow()
    with session_scope(engine) as s:
        stale = s.exec(select(Job).where(Job.state == JobState.running, col(Job.lease_until) < now)).all()
        for job in stale:
            job.state = JobState.queued
            job.next_attempt_at = now
            job.lease_until = None
            job.error = f"lease expired on {job.leased_by or 'unknown worker'} (worker died?); re-queued"
            s.add(job)
            log.warning("job %s: lease expired, re-queued", job.id)
        return [j.id for j in stale if j.id is not None]


def requeue_all_running(engine: Engine, worker_prefix: str) -> list[int]:
    """At start-up: jobs our previous incarnation was running cannot still run; re-queue them now."""
    with session_scope(engine) as s:
        mine = s.exec(
            select(Job).where(Job.state == JobState.running, col(Job.leased_by).startswith(worker_prefix))
        ).all()
        for job in mine:
            job.state = JobState.queued
            job.next_attempt_at = utcnow()
            job.lease_until = None
            job.error = "server restarted while the job ran; re-queued"
            s.add(job)
        return [j.id for j in mine if j.id is not None]


def cancel(session: Session, job: Job) -> None:
    """Cancel a queued or running job (a running one stops at its next operator boundary)."""
    check_transition(job.state, JobState.cancelled)
    job.state = JobState.cancelled
    job.finished_at = utcnow()
    job.lease_until = None
    session.add(job)


def retry(session: Session, job: Job, budget: int) -> None:
    """Put a finished job back in the queue now, with ``budget`` more attempts."""
    check_transition(job.state, JobState.queued)
    job.state = JobState.queued
    job.next_attempt_at = utcnow()
    job.max_attempts = job.attempts + budget
    job.error = ""
    job.finished_at = None
    session.add(job)
