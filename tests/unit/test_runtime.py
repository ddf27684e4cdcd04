"""The composition root builds each part once, on first use, and never migrates unless asked to;
it owns the process's wake-up channels and model cache; ``run_every`` survives a failing tick and
stops when told; the outbox attempts a delivery when woken, not at its next poll."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session

from radloop.core.db import session_scope
from radloop.core.errors import ConfigError
from radloop.core.models import Delivery, Job, Result, Series, Study
from radloop.core.settings import Settings, load_settings
from radloop.core.ticking import run_every
from radloop.runtime import Runtime


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path / "data"))
    return load_settings(None)


def test_reading_pipelines_needs_no_database(settings: Settings) -> None:
    runtime = Runtime.build(settings, migrate=False)
    assert "brain-extraction" in runtime.catalog
    assert not settings.data_dir.exists()


def test_a_read_only_runtime_refuses_a_missing_database(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="run `radloop db upgrade` or `radloop serve` first"):
        _ = Runtime.build(settings, migrate=False).engine
    assert not settings.data_dir.exists()


def test_parts_are_built_once_and_shared(settings: Settings) -> None:
    runtime = Runtime.build(settings, migrate=True).preload()
    assert runtime.puller.store is runtime.store
    assert runtime.assembler.catalog is runtime.catalog
    assert runtime.store.engine is runtime.engine is runtime.index.engine
    assert Runtime.build(settings, migrate=False).engine is not None  # reads the migrated database


def test_run_every_logs_a_failing_tick_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("peer down")
        if len(calls) == 3:
            stop.set()

    with caplog.at_level(logging.ERROR, logger="radloop.core.ticking"):
        run_every("outbox", tick, 0.0, stop)
    assert len(calls) == 3
    assert [r.getMessage() for r in caplog.records] == ["outbox tick failed"]
    assert caplog.records[0].exc_info is not None


def test_wakeups_and_model_cache_belong_to_the_runtime(settings: Settings) -> None:
    runtime = Runtime.build(settings, migrate=True).preload()
    assert runtime.assembler.jobs_queued is runtime.jobs_queued
    assert runtime.outbox.wakeup is runtime.results_ready
    executor = runtime.executor()
    try:
        assert executor.wakeup is runtime.jobs_queued and executor.results_ready is runtime.results_ready
    finally:
        executor.stop(wait=True)
    assert runtime.models is runtime.models
    assert runtime.models.budget_bytes == settings.workers.model_memory_mb << 20
    other = Runtime.build(settings, migrate=False)  # another process's runtime: channels of its own
    assert other.jobs_queued is not runtime.jobs_queued and other.models is not runtime.models


def _pending_delivery(s: Session, key: str) -> int:
    study = Study(study_instance_uid=f"1.2.{key}")
    s.add(study)
    s.flush()
    series = Series(study_id=study.id, series_instance_uid=f"1.2.{key}.1")  # type: ignore[arg-type]
    s.add(series)
    s.flush()
    job = Job(pipeline="p", series_id=series.id, idempotency_key=key)  # type: ignore[arg-type]
    s.add(job)
    s.flush()
    result = Result(job_id=job.id, kind="SEG", sop_instance_uid=f"1.2.{key}.9", path="x.dcm")  # type: ignore[arg-type]
    s.add(result)
    s.flush()
    delivery = Delivery(result_id=result.id, destination="nowhere")  # type: ignore[arg-type]
    s.add(delivery)
    s.flush()
    return int(delivery.id)  # type: ignore[arg-type]


def _attempts(runtime: Runtime, delivery_id: int) -> int:
    with session_scope(runtime.engine) as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None
        return row.attempts


def test_the_outbox_attempts_a_delivery_when_woken_not_at_its_poll_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RADLOOP_OUTBOX__POLL_INTERVAL_S", "3600")  # only a wake-up can be in time
    runtime = Runtime.build(load_settings(None), migrate=True)
    with session_scope(runtime.engine) as s:
        first = _pending_delivery(s, "first")
    stop = threading.Event()
    thread = threading.Thread(target=runtime.outbox.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # the first tick runs at once: the delivery to an unconfigured destination is attempted
        # (and fails, visibly); the outbox then waits for a wake-up or an hour
        _wait_until(lambda: _attempts(runtime, first) == 1)
        with session_scope(runtime.engine) as s:
            second = _pending_delivery(s, "second")
        runtime.results_ready.notify()  # what the executor does when a job's worker returns
        _wait_until(lambda: _attempts(runtime, second) == 1)
    finally:
        stop.set()
        runtime.results_ready.notify()
        thread.join(timeout=30)
    assert not thread.is_alive()
    with session_scope(runtime.engine) as s:
        row = s.get(Delivery, second)
        assert row is not None and "nowhere" in row.last_error


def _wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout (far below the outbox's poll interval)"
        time.sleep(0.05)
