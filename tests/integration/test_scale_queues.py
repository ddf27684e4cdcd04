"""Queues by resource and message priorities of the celery executor, on the machine's RabbitMQ
(a vhost of this module's own) and PostgreSQL (a database of its own), with real ``radloop
worker`` processes.

Two quick pipelines on a small synthetic CT (one ``dicom.series_to_volume`` step): ``quick-cpu``
and ``quick-gpu`` (``resources: {gpus: 1}``, so its jobs go to the ``gpu`` queue).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from radloop.connector.assembler import Assembler
from radloop.connector.store import InstanceStore, describe
from radloop.core import db
from radloop.core.models import Job, JobState, Priority, Series
from radloop.core.settings import Settings, load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.celery_executor import JobPublisher
from radloop.pipelines.operators import builtin_registry
from scaleout import postgres_database, wait_until

pytestmark = [pytest.mark.peers]

QUICK = """name: {name}
version: 1.0.0
match: {{modality: [CT]}}
priority: {priority}
resources: {resources}
operators:
  - {{id: volume, use: dicom.series_to_volume, inputs: {{series: input.series}}}}
"""


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} failed (RabbitMQ at 127.0.0.1:5672 is required): {done.stderr}"
        )


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = f"radloop_test_{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    _rabbitmqctl("delete_vhost", name)


@dataclass
class Env:
    settings: Settings
    config_path: Path
    engine: Engine
    publisher: JobPublisher
    series_id: int
    workdir: Path
    workers: list[subprocess.Popen[bytes]]

    def worker(self, name: str, queues: str) -> Path:
        log = self.workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
        cmd = [sys.executable, "-m", "radloop.cli", "worker", "-c", str(self.config_path)]
        proc = subprocess.Popen(
            [*cmd, "--queues", queues, "--concurrency", "1", "--name", name],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.workers.append(proc)
        wait_until(lambda: "radloop ready (role worker)" in log.read_text(), 120, f"worker {name} ({log})")
        return log

    def jobs(self) -> list[Job]:
        with Session(self.engine) as s:
            return list(s.exec(select(Job)).all())


@pytest.fixture
def env(tmp_path: Path, vhost: str, synthetic_ct_dir: Path) -> Iterator[Env]:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "quick-cpu.yaml").write_text(QUICK.format(name="quick-cpu", priority="low", resources="{}"))
    (pipelines / "quick-gpu.yaml").write_text(
        QUICK.format(name="quick-gpu", priority="normal", resources="{gpus: 1}")
    )
    with postgres_database() as name:
        config = {
            "data_dir": str(tmp_path / "data"),
            "database": {"url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"},
            "dicom": {"listeners": [{"ae_title": "RADLOOP"}]},
            "pipelines": {"dirs": [str(pipelines)], "include_reference": False},
            "workers": {
                "executor": "celery",
                "broker_url": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                "poll_interval_s": 0.3,
                "lease_s": 30,
            },
        }
        config_path = tmp_path / "radloop.yaml"
        config_path.write_text(yaml.safe_dump(config))
        settings = load_settings(config_path)
        db.upgrade(settings)
        engine = db.make_engine(settings)
        store = InstanceStore(settings.data_dir, engine)
        for f in sorted(synthetic_ct_dir.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            store.store(
                f.read_bytes(), describe(ds, str(ds.file_meta.TransferSyntaxUID), "RADLOOP", "SCU"), ds
            )
        with Session(engine) as s:
            series_id = s.exec(select(Series.id)).one()
        catalog = PipelineCatalog.load(settings, builtin_registry())
        assert series_id is not None
        env = Env(
            settings, config_path, engine, JobPublisher(settings, engine, catalog), series_id, tmp_path, []
        )
        try:
            yield env
        finally:
            for proc in env.workers:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            env.publisher.close()
            engine.dispose()


def test_gpu_pipeline_runs_only_on_a_gpu_worker(env: Env) -> None:
    assembler = Assembler(env.settings, env.engine, PipelineCatalog.load(env.settings, builtin_registry()))
    assert assembler.complete(env.series_id, reason="test")
    assert env.publisher.tick() == 2
    env.worker("cpu-box", "cpu")

    def by_pipeline() -> dict[str, Job]:
        return {j.pipeline: j for j in env.jobs()}

    wait_until(lambda: by_pipeline()["quick-cpu"].state == JobState.succeeded, 120, "the cpu job done")
    assert by_pipeline()["quick-cpu"].leased_by.startswith("cpu-box:")
    time.sleep(5)  # the cpu-only worker had every chance to take the gpu job
    gpu_job = by_pipeline()["quick-gpu"]
    assert gpu_job.state == JobState.queued and gpu_job.attempts == 0
    env.worker("gpu-box", "gpu")
    wait_until(lambda: by_pipeline()["quick-gpu"].state == JobState.succeeded, 120, "the gpu job done")
    assert by_pipeline()["quick-gpu"].leased_by.startswith("gpu-box:")


def test_stat_job_overtakes_ten_low_jobs(env: Env) -> None:
    def queue(priority: Priority, n: int) -> None:
        with Session(env.engine) as s:
            for i in range(n):
                s.add(
                    Job(
                        pipeline="quick-cpu",
                        series_id=env.series_id,
                        series_revision=i,
                        idempotency_key=f"{priority.value}-{i}",
                        priority=priority,
                        priority_rank=priority.rank,
                    )
                )
            s.commit()

    queue(Priority.low, 10)
    assert env.publisher.tick() == 10  # the backlog is in RabbitMQ first
    queue(Priority.stat, 1)
    assert env.publisher.tick() == 1
    env.worker("one-box", "cpu")
    wait_until(lambda: all(j.state == JobState.succeeded for j in env.jobs()), 180, "all 11 jobs done")
    jobs = env.jobs()
    (stat,) = [j for j in jobs if j.priority == Priority.stat]
    low_starts = [j.started_at for j in jobs if j.priority == Priority.low]
    assert stat.started_at is not None and all(t is not None for t in low_starts)
    assert stat.started_at < min(t for t in low_starts if t is not None)
