"""Job states as row transitions: claim, lease, retry with backoff, expiry, restart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from radloop.core import db, jobs
from radloop.core.models import Job, JobState, Priority, Series, Study, utcnow
from radloop.core.settings import load_settings


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    settings = load_settings(data_dir=str(tmp_path))
    db.upgrade(settings)
    return db.make_engine(settings)


def _job(engine: Engine, key: str, priority: Priority = Priority.normal, max_attempts: int = 3) -> int:
    with db.session_scope(engine) as s:
        study = Study(study_instance_uid=f"1.2.{abs(hash(key)) % 10**8}")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid=f"1.3.{abs(hash(key)) % 10**8}")  # type: ignore[arg-type]
        s.add(series)
        s.flush()
        job = Job(
            pipeline="p",
            series_id=series.id,
            idempotency_key=key,
            priority=priority,  # type: ignore[arg-type]
            priority_rank=priority.rank,
            max_attempts=max_attempts,
        )
        s.add(job)
        s.flush()
        assert job.id is not None
        return job.id


def _get(engine: Engine, job_id: int) -> Job:
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_claim_takes_most_urgent_first_and_only_once(engine: Engine) -> None:
    low = _job(engine, "low", Priority.low)
    stat = _job(engine, "stat", Priority.stat)
    first = jobs.claim_next(engine, "w1", 60)
    assert first is not None and first.id == stat and first.state == JobState.running and first.attempts == 1
    second = jobs.claim_next(engine, "w2", 60)
    assert second is not None and second.id == low
    assert jobs.claim_next(engine, "w3", 60) is None


def test_transient_failure_retries_with_backoff_then_fails(engine: Engine) -> None:
    job_id = _job(engine, "k", max_attempts=2)
    jobs.claim_next(engine, "w", 60)
    state = jobs.fail_attempt(engine, job_id, "w", "peer down", transient=True, base_s=10, cap_s=60)
    assert state == JobState.queued
    job = _get(engine, job_id)
    assert job.next_attempt_at > utcnow() + timedelta(seconds=8)
    assert "retry in 10 s: peer down" in job.error
    assert jobs.claim_next(engine, "w", 60) is None  # not due yet
    with db.session_scope(engine) as s:
        row = s.get(Job, job_id)
        assert row is not None
        row.next_attempt_at = utcnow()
        s.add(row)
    jobs.claim_next(engine, "w", 60)
    assert (
        jobs.fail_attempt(engine, job_id, "w", "still down", transient=True, base_s=10, cap_s=60)
        == JobState.failed
    )
    assert _get(engine, job_id).error == "still down"


def test_permanent_failure_fails_at_once(engine: Engine) -> None:
    job_id = _job(engine, "k")
    jobs.claim_next(engine, "w", 60)
    assert (
        jobs.fail_attempt(engine, job_id, "w", "bad input", transient=False, base_s=1, cap_s=1)
        == JobState.failed
    )


def test_expired_lease_is_requeued_and_old_owner_loses_it(engine: Engine) -> None:
    job_id = _job(engine, "k")
    jobs.claim_next(engine, "dead-worker", 0.001)
    assert jobs.requeue_expired(engine) == [job_id]
    assert _get(engine, job_id).state == JobState.queued
    again = jobs.claim_next(engine, "new-worker", 60)
    assert again is not None and again.attempts == 2
    assert not jobs.finish(engine, job_id, "dead-worker")  # the old owner cannot finish it
    assert jobs.finish(engine, job_id, "new-worker")
    assert _get(engine, job_id).state == JobState.succeeded


def test_restart_requeues_this_hosts_running_jobs(engine: Engine) -> None:
    job_id = _job(engine, "k")
    jobs.claim_next(engine, "local@host:123", 600)
    assert jobs.requeue_all_running(engine, "local@host") == [job_id]
    assert "restarted" in _get(engine, job_id).error


def test_cancel_and_retry_follow_the_state_machine(engine: Engine) -> None:
    job_id = _job(engine, "k")
    with db.session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        jobs.cancel(s, job)
    with db.session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        with pytest.raises(jobs.JobTransitionError):
            jobs.cancel(s, job)
        jobs.retry(s, job, budget=3)
        assert job.state == JobState.queued and job.max_attempts == job.attempts + 3


def test_backoff_is_capped() -> None:
    assert [jobs.backoff_seconds(n, 5, 60) for n in (1, 2, 3, 4, 5, 10)] == [5, 10, 20, 40, 60, 60]
