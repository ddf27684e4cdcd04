"""Several listener processes on one port (issue 13): a real ``radloop serve`` with
``dicom.listener_processes: 2``, four DCMTK ``storescu`` processes in parallel, one series.

Each association carries 75 of the series' 300 instances. The series must be indexed once
(300 instances, one series row), completed once when the last association is released (not
when the first is: the quiet period is 10 minutes here, so only association-end completion can
complete it) and routed once: one job.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

import peers
from radloop.core.models import Instance, Job, JobState, Series, SeriesState
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

AE = "RADLOOP_CT"
PIPELINE = """\
name: ct-volume
version: "1"
match: {modality: [CT], min_instances: 10}
operators:
  - id: volume
    use: dicom.series_to_volume
    inputs: {series: input.series}
"""


def _rows(server: RadloopServer, model: Any) -> list[Any]:
    with Session(server.engine) as s:
        return list(s.exec(select(model)).all())


def _listening_sockets(port: int) -> int:
    done = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return len([line for line in done.stdout.splitlines() if line.strip()])


def test_four_associations_into_two_listener_processes_make_one_series_and_one_job(tmp_path: Path) -> None:
    files = peers.make_synthetic_ct_series(tmp_path / "ct", n=300, rows=64, cols=64, seed=5)
    parts = []
    for index in range(4):
        part = tmp_path / f"part{index}"
        part.mkdir()
        for f in files[index::4]:
            (part / f.name).symlink_to(f)
        parts.append(part)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "ct-volume.yaml").write_text(PIPELINE)
    config = {
        "dicom": {
            "listener_processes": 2,
            "listeners": [{"ae_title": AE, "pipelines": ["ct-volume"], "quiet_period_s": 600}],
        },
        "pipelines": {"dirs": [str(pipelines)], "include_reference": False},
    }
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = RadloopServer(server_dir, config).start(timeout=240)  # three processes import radloop
    try:
        assert _listening_sockets(server.port) == 2, "two processes listen on the port (SO_REUSEPORT)"
        assert "1 listener process(es) share port" in server.log_text()
        command = [peers.require_binary("storescu"), "-aet", "MODALITY", "-aec", AE, "-to", "10", "-ta", "10"]
        senders = [
            subprocess.Popen(
                [*command, "+sd", "127.0.0.1", str(server.port), str(part)],
                env=peers.peer_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for part in parts
        ]
        for sender in senders:
            out, _ = sender.communicate(timeout=300)
            assert sender.returncode == 0, out
        (job,) = peers.wait_for(
            lambda: [j for j in _rows(server, Job) if j.state == JobState.succeeded],
            120,
            interval=0.5,
            what=f"the series' job (log: {server.log_path})",
        )
        instances = _rows(server, Instance)
        (series,) = _rows(server, Series)
        assert len(instances) == 300
        assert len({i.sop_instance_uid for i in instances}) == 300
        assert series.instance_count == 300
        assert series.state == SeriesState.complete
        assert series.revision == 1, "completed once: when the last association was released"
        assert len(_rows(server, Job)) == 1
        assert job.series_id == series.id
    finally:
        server.stop()
