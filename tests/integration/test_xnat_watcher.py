"""``radloop xnat watch PROJECT``: a pipeline runs once per new session, also across restarts."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

import peers
import xnat_helpers as h
from radloop.core.errors import ConfigError
from radloop.core.settings import Settings, load_settings
from radloop.core.uids import derived_uid
from radloop.xnat_plugin.watcher import ProjectWatcher, WatchState
from xnat_model import Experiment, zip_files
from xnat_server import XnatTestServer


@pytest.fixture
def xnat_server() -> Iterator[XnatTestServer]:
    with XnatTestServer() as server:
        server.archive.add_project("BRAIN")
        yield server


def _add_session(server: XnatTestServer, label: str, paths: list[Path], subject: str = "SUBJ1") -> Experiment:
    """A session as a scanner's upload leaves it (imported on the server side, not by radloop)."""
    payload = zip_files((p.name, p.read_bytes()) for p in paths)
    return server.archive.import_zip(payload, "BRAIN", subject, label, "none")


def _ct(tmp_path: Path, seed: int, n: int = 12) -> list[Path]:
    return peers.make_synthetic_ct_series(tmp_path / f"ct-{seed}", n=n, rows=64, cols=64, seed=seed)


def _settings(server: XnatTestServer, tmp_path: Path, **watch: Any) -> Settings:
    return load_settings(
        None,
        data_dir=str(tmp_path / "data"),
        destinations=[h.destination(server)],
        xnat={"watch": {"destination": "research-xnat", "pipelines": ["ct-threshold"], **watch}},
    )


def _expected_seg(paths: list[Path]) -> str:
    series = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    return f"{derived_uid(f'ct-threshold:{series}:0', 'seg', 'instance')}.dcm"


def test_each_new_session_runs_once_also_across_restarts(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    series_a, series_b, series_c = _ct(tmp_path, 0), _ct(tmp_path, 1), _ct(tmp_path, 2)
    a = _add_session(xnat_server, "VISIT_A", series_a)
    b = _add_session(xnat_server, "VISIT_B", series_b)
    short = _add_session(xnat_server, "SCOUT", _ct(tmp_path, 3, n=4), subject="SUBJ2")  # no series accepted
    settings = _settings(xnat_server, tmp_path)

    first = ProjectWatcher(settings, "BRAIN", h.threshold_catalog()).poll_once()
    assert first.handled == {a.id: "done", b.id: "done", short.id: "done"}
    for label, paths in (("VISIT_A", series_a), ("VISIT_B", series_b)):
        assert list(h.session_resource_files(xnat_server, "BRAIN", label, "SEG")) == [_expected_seg(paths)]
    assert h.session_resource_files(xnat_server, "BRAIN", "SCOUT", "SEG") == {}

    before, requests_before = list(xnat_server.archive.mutations), len(xnat_server.requests)
    restarted = ProjectWatcher(
        settings, "BRAIN", h.threshold_catalog()
    ).poll_once()  # a new process would do this
    assert restarted.handled == {}
    assert xnat_server.archive.mutations == before
    assert not [r for r in xnat_server.requests[requests_before:] if "/files" in r], (
        "nothing downloaded again"
    )

    c = _add_session(xnat_server, "VISIT_C", series_c, subject="SUBJ3")
    third = ProjectWatcher(settings, "BRAIN", h.threshold_catalog()).poll_once()
    assert third.handled == {c.id: "done"} and third.results == [f"SEG/{_expected_seg(series_c)}"]
    state = json.loads((tmp_path / "data" / "xnat" / "watch-BRAIN.json").read_text())
    assert state["cursor"] == c.insert_date and list(state["sessions"]) == [c.id]


def test_a_failing_session_is_retried_then_given_up_and_holds_the_cursor(
    xnat_server: XnatTestServer, tmp_path: Path
) -> None:
    broken = _ct(tmp_path, 0)
    ds = pydicom.dcmread(broken[3])
    ds.Rows = 32  # pixel data no longer matches: the volume cannot be built
    ds.save_as(broken[3])
    bad = _add_session(xnat_server, "BROKEN", broken)
    good = _add_session(xnat_server, "GOOD", _ct(tmp_path, 1), subject="SUBJ2")
    settings = _settings(xnat_server, tmp_path, max_attempts=2)
    state_path = tmp_path / "data" / "xnat" / "watch-BRAIN.json"

    first = ProjectWatcher(settings, "BRAIN", h.threshold_catalog()).poll_once()
    assert first.handled == {bad.id: "retry", good.id: "done"}
    state = WatchState.load(state_path, "BRAIN")
    assert state.cursor < bad.insert_date or state.cursor == ""  # held before the unfinished session
    assert state.sessions[bad.id]["attempts"] == 1 and "Error" in state.sessions[bad.id]["error"]

    second = ProjectWatcher(settings, "BRAIN", h.threshold_catalog()).poll_once()
    assert second.handled == {bad.id: "failed"}  # the good one is not run again
    assert WatchState.load(state_path, "BRAIN").cursor == good.insert_date

    assert ProjectWatcher(settings, "BRAIN", h.threshold_catalog()).poll_once().handled == {}


def test_run_keeps_polling_until_stopped(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    watcher = ProjectWatcher(_settings(xnat_server, tmp_path, interval_s=0.2), "BRAIN", h.threshold_catalog())
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        series = _ct(tmp_path, 0)
        _add_session(xnat_server, "LATER", series)  # arrives while the watcher runs
        peers.wait_for(
            lambda: h.session_resource_files(xnat_server, "BRAIN", "LATER", "SEG"),
            30,
            what="SEG stored on the session that arrived",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert list(h.session_resource_files(xnat_server, "BRAIN", "LATER", "SEG")) == [_expected_seg(series)]


def test_one_watcher_per_project(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    watcher = ProjectWatcher(_settings(xnat_server, tmp_path), "BRAIN", h.threshold_catalog())
    watcher.state_path.parent.mkdir(parents=True)
    with open(watcher.state_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another watcher of XNAT project BRAIN is running"):
            watcher.poll_once()


def test_watch_needs_an_xnat_destination(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        destinations=[{"kind": "folder", "name": "share", "path": str(tmp_path)}],
        xnat={"watch": {"destination": "share", "pipelines": ["ct-threshold"]}},
    )
    with pytest.raises(ConfigError, match="'share' is a folder destination, not xnat"):
        ProjectWatcher(settings, "BRAIN", h.threshold_catalog())


@pytest.mark.slow
def test_cli_watch_once_runs_brain_extraction_once_across_restarts(
    xnat_server: XnatTestServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    session = _add_session(xnat_server, "MR1", sorted(t1_series_dir.iterdir()), subject="R571")
    config = tmp_path / "radloop.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "destinations": [h.destination(xnat_server)],
                "xnat": {"watch": {"destination": "research-xnat", "pipelines": ["brain-extraction"]}},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}

    def watch_once() -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, "-m", "radloop.cli", "xnat", "watch", "BRAIN", "--once", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert h.XNAT_PASSWORD not in run.stderr + run.stdout
        return dict(json.loads(run.stdout))

    first = watch_once()
    assert first["handled"] == {session.id: "done"}
    (seg_name,) = h.session_resource_files(xnat_server, "BRAIN", "MR1", "SEG")
    assert first["results"] == [f"SEG/{seg_name}"]
    before = list(xnat_server.archive.mutations)
    again = watch_once()  # a restarted watcher: a new process, the same state file
    assert again["handled"] == {} and xnat_server.archive.mutations == before
