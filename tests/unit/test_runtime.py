"""The composition root builds each part once, on first use, and never migrates unless asked to;
``run_every`` survives a failing tick and stops when told."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from radloop.core.errors import ConfigError
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
