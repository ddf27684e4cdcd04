"""CLI against a running server: `radloop send` (.dcm.gz), studies, and the job commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import peers
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]


def test_send_gz_series_then_job_commands(shared_data: Path, tmp_path: Path) -> None:
    cfg = {
        "dicom": {
            "listeners": [
                {"ae_title": "RADLOOP_BRAIN", "pipelines": ["brain-extraction"], "quiet_period_s": 60}
            ]
        },
    }
    server = RadloopServer(tmp_path, cfg)
    server.start()
    try:
        sent = server.cli(
            "send",
            str(shared_data / "mr-brain-t1-philips" / "series"),
            "--host",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--called-ae",
            "RADLOOP_BRAIN",
            with_config=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "170 sent, 0 failed" in sent.stdout
        jobs = peers.wait_for(
            lambda: json.loads(server.cli("jobs", "list", "--json").stdout),
            30,
            what="a job for the sent series",
        )
        (job,) = jobs
        assert job["pipeline"] == "brain-extraction"
        studies = json.loads(server.cli("studies", "list", "--json").stdout)
        assert studies[0]["series"][0]["instance_count"] == 170
        peers.wait_for(
            lambda: (
                json.loads(server.cli("jobs", "show", str(job["id"]), "--json").stdout)["state"]
                in ("succeeded", "failed")
            ),
            240,
            interval=1,
            what="job finished",
        )
        shown = json.loads(server.cli("jobs", "show", str(job["id"]), "--json").stdout)
        assert shown["state"] == "succeeded", shown["error"]
        assert [s["operator_id"] for s in shown["steps"]] == ["volume", "brain", "seg"]
        assert all(s["duration_s"] > 0 for s in shown["steps"])
        assert "volume" in shown["steps"][0]["log"]  # per-operator log lines are kept
        assert shown["results"][0]["kind"] == "SEG"
        # Cancelling a finished job is refused with a clear message; retry re-queues it.
        cancel = server.cli("jobs", "cancel", str(job["id"]))
        assert cancel.returncode == 2 and "a succeeded job cannot become cancelled" in cancel.stderr
        retried = server.cli("jobs", "retry", str(job["id"]), "--json")
        assert retried.returncode == 0 and json.loads(retried.stdout)["state"] == "queued"
        peers.wait_for(
            lambda: (
                json.loads(server.cli("jobs", "show", str(job["id"]), "--json").stdout)["state"]
                == "succeeded"
            ),
            240,
            interval=1,
            what="retried job finished",
        )
        shown = json.loads(server.cli("jobs", "show", str(job["id"]), "--json").stdout)
        assert len(shown["results"]) == 1  # the retry rewrote the same SEG, no second result
    finally:
        server.stop()


def test_disk_floor_refuses_associations(tmp_path: Path) -> None:
    cfg = {"dicom": {"min_free_bytes": 1 << 62, "listeners": [{"ae_title": "RADLOOP"}]}}
    with RadloopServer(tmp_path, cfg) as server:
        server.settings  # noqa: B018 (config is valid)
        assert peers.echoscu("127.0.0.1", server.port, "RADLOOP").returncode != 0
        assert "free disk space below the floor" in server.log_text()
