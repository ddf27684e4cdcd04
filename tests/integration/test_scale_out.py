"""Scale-out, simulated honestly: radloop roles as separate processes in their own network
namespaces (veth to a bridge), sharing only the data folder, with PostgreSQL, a RabbitMQ node and
Orthanc reached by address (see ``tests/scaleout.py``).

Hosts: ``ingest`` (the ingest and api roles), ``outbox``, ``worker-a`` and ``worker-b`` (the
celery executor, one pool process each, ``torch_threads: 1``). The RabbitMQ node is this
module's own, so it can be restarted mid-run and given a short consumer timeout (1 s, checked
every second) that every brain job outlasts (a few seconds each, more under load).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine, select

import peers
from radloop.core.models import Instance, Job, JobState, JobStep, Series
from radloop.core.settings import load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.celery_executor import JobPublisher
from radloop.pipelines.operators import builtin_registry
from scaleout import Hosts, PrivateRabbit, Role, cli, postgres_database, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.slow]

BRAIN_AE = "RADLOOP_BRAIN"
SPLIT_AE = "RADLOOP_SPLIT"
WORKERS = ("worker-a", "worker-b")


@dataclass
class Cluster:
    hosts: Hosts
    rabbit: PrivateRabbit
    db_url_local: str
    roles: dict[str, Role]
    addresses: dict[str, str]
    dicom_port: int
    config: dict[str, Any]
    workdir: Path

    @property
    def engine(self) -> Engine:
        return create_engine(self.db_url_local)

    def jobs(self) -> list[Job]:
        with Session(self.engine) as s:
            return list(s.exec(select(Job).order_by(Job.id)).all())  # type: ignore[arg-type]

    def steps(self, job_id: int) -> list[JobStep]:
        with Session(self.engine) as s:
            return list(s.exec(select(JobStep).where(JobStep.job_id == job_id)).all())

    def worker_logs(self) -> str:
        return "\n".join(f"--- {w} ---\n{self.roles[w].log_text()[-4000:]}" for w in WORKERS)


CT_VOLUME = """name: ct-volume
version: 1.0.0
match: {modality: [CT], called_ae: [RADLOOP_SPLIT]}
operators:
  - {id: volume, use: dicom.series_to_volume, inputs: {series: input.series}}
"""


def _config(
    data_dir: Path, db_url: str, broker_url: str, orthanc: peers.OrthancServer, bridge_ip: str
) -> dict[str, Any]:
    pipelines = data_dir.parent / "pipelines"
    pipelines.mkdir(exist_ok=True)
    (pipelines / "ct-volume.yaml").write_text(CT_VOLUME)
    return {
        "data_dir": str(data_dir),
        "database": {"url": db_url},
        "dicom": {
            "port": 11112,
            "min_free_bytes": 0,
            "listeners": [
                {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60},
                # one series over several ingest hosts: completed by the quiet period, not at
                # the release of one association (which another host's may still outlast)
                {
                    "ae_title": SPLIT_AE,
                    "pipelines": ["ct-volume"],
                    "quiet_period_s": 4,
                    "complete_on_release": False,
                },
            ],
        },
        "api": {"port": 8080},
        "workers": {
            "executor": "celery",
            "broker_url": broker_url,
            "lease_s": 8,
            "republish_after_s": 30,
            "poll_interval_s": 0.3,
            "torch_threads": 1,
            "processes": 1,
            "retry_base_s": 1.0,
        },
        "outbox": {"poll_interval_s": 0.5, "retry_base_s": 1.0, "retry_cap_s": 5.0},
        "destinations": [orthanc.destination(host=bridge_ip)],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}, "dirs": [str(pipelines)]},
    }


def _role_config(base: dict[str, Any], host_ip: str, name: str) -> dict[str, Any]:
    cfg = json.loads(json.dumps(base))
    cfg["dicom"]["host"] = host_ip
    cfg["api"]["host"] = host_ip
    cfg["workers"]["name"] = name
    return cfg


@pytest.fixture(scope="module")
def cluster(orthanc: peers.OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("scale")
    hosts = Hosts()
    roles: dict[str, Role] = {}
    rabbit = PrivateRabbit(workdir / "rabbit", hosts.ip, consumer_timeout_ms=1000)
    try:
        with postgres_database() as db_name:
            pg_port = hosts.forward(5432)
            rabbit.start()
            db_url = f"postgresql+psycopg://postgres@{hosts.ip}:{pg_port}/{db_name}"
            base = _config(workdir / "data", db_url, rabbit.url, orthanc, hosts.ip)
            addresses = {name: hosts.add(name) for name in ("ingest", "ingest-b", "outbox", *WORKERS)}
            roles["ingest"] = Role(
                hosts, "ingest", "ingest", _role_config(base, addresses["ingest"], "ingest"), workdir
            )
            api_cfg = _role_config(base, addresses["ingest"], "api")
            roles["api"] = Role(hosts, "ingest", "api", api_cfg, workdir / "api")
            roles["ingest-b"] = Role(
                hosts, "ingest-b", "ingest", _role_config(base, addresses["ingest-b"], "ingest-b"), workdir
            )
            roles["outbox"] = Role(
                hosts, "outbox", "outbox", _role_config(base, addresses["outbox"], "outbox"), workdir
            )
            for w in WORKERS:
                roles[w] = Role(hosts, w, "worker", _role_config(base, addresses[w], w), workdir)
            roles["ingest"].start()  # migrates the schema first
            others = ("ingest-b", "api", "outbox", *WORKERS)
            for name in others:
                roles[name].start(wait=False)
            for name in others:
                wait_until(roles[name]._ready, 240, f"{name} ready (log {roles[name].log_path})")
            local_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
            yield Cluster(hosts, rabbit, local_url, roles, addresses, 11112, base, workdir)
            for role in roles.values():
                role.stop()
    finally:
        for role in roles.values():
            role.stop()
        rabbit.stop()
        hosts.close()


def _segs(orthanc: peers.OrthancServer) -> list[str]:
    return [i for i in orthanc.instances() if orthanc.instance_tags(i).get("Modality") == "SEG"]


def _job(cluster: Cluster, job_id: int = 1) -> Job:
    (job,) = [j for j in cluster.jobs() if j.id == job_id]
    return job


def _wait_state(cluster: Cluster, state: JobState, timeout: float, since_attempt: int = 0) -> Job:
    def done() -> Job | None:
        if not any(j.id == 1 for j in cluster.jobs()):  # not routed yet (the quiet period runs)
            return None
        job = _job(cluster)
        return job if job.state == state and job.attempts > since_attempt else None

    return wait_until(
        done, timeout, f"job 1 {state.value} after attempt {since_attempt}\n{cluster.worker_logs()}"
    )


def _attempts_run(cluster: Cluster) -> list[int]:
    """Attempts whose pipeline started (first operator step), in order: a duplicated run shows twice."""
    first = [s for s in cluster.steps(1) if s.operator_id == "volume"]
    return sorted(s.attempt for s in first)


def test_multi_host_t1_to_seg_worker_kill_broker_restart_duplicate(
    cluster: Cluster, orthanc_clean: peers.OrthancServer, t1_series_dir: Path
) -> None:
    ingest = cluster.roles["ingest"]
    # 1. storescu → ingest host; one of the two workers runs it; SEG in Orthanc; jobs show names it
    sent = peers.storescu(t1_series_dir, cluster.addresses["ingest"], cluster.dicom_port, BRAIN_AE)
    assert sent.returncode == 0, sent.stderr
    job = _wait_state(cluster, JobState.succeeded, 300)
    segs = wait_until(lambda: _segs(orthanc_clean), 120, "SEG in Orthanc")
    assert len(segs) == 1
    runner = job.leased_by.split(":")[0]
    assert runner in WORKERS, job.leased_by
    shown = cli(ingest.config_path, "jobs", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert runner in shown.stdout, shown.stdout
    with Session(cluster.engine) as s:
        assert len(s.exec(select(Series)).all()) == 1
    assert _attempts_run(cluster) == [1]

    # 2. the same message published twice more → nothing runs again
    settings = load_settings(ingest.config_path)
    publisher = JobPublisher(
        settings.model_copy(),
        create_engine(cluster.db_url_local),
        PipelineCatalog.load(settings, builtin_registry()),
    )
    publisher.publish(job)
    publisher.publish(job)
    wait_until(
        lambda: cluster.worker_logs().count("message ignored") >= 2, 60, "both duplicate messages ignored"
    )
    assert _job(cluster).attempts == 1 and _attempts_run(cluster) == [1]

    # 3. kill -9 the worker running it mid-job → the other worker finishes it; still one SEG
    done = cli(ingest.config_path, "jobs", "retry", "1")
    assert done.returncode == 0, done.stderr
    running = _wait_state(cluster, JobState.running, 60, since_attempt=1)
    victim = running.leased_by.split(":")[0]
    in_model = [(2, "brain")]
    wait_until(
        lambda: (
            [
                (x.attempt, x.operator_id)
                for x in cluster.steps(1)
                if x.attempt == 2 and x.operator_id == "brain"
            ]
            == in_model
        ),
        60,
        "the retried job inside its model",
    )
    cluster.roles[victim].kill9()
    survivor = next(w for w in WORKERS if w != victim)
    finished = _wait_state(cluster, JobState.succeeded, 300, since_attempt=2)
    assert finished.leased_by.split(":")[0] == survivor
    assert finished.attempts == 3  # 1, the killed 2, and 3 on the survivor: no extra run
    time.sleep(3)
    assert len(_segs(orthanc_clean)) == 1
    cluster.roles[victim].start()

    # 4. RabbitMQ restarted mid-run: the job in flight finishes once; a job queued while the broker
    #    is down runs once it is back
    done = cli(ingest.config_path, "jobs", "retry", "1")
    assert done.returncode == 0, done.stderr
    _wait_state(cluster, JobState.running, 60, since_attempt=3)
    cluster.rabbit.stop()
    _wait_state(cluster, JobState.succeeded, 300, since_attempt=3)
    done = cli(ingest.config_path, "jobs", "retry", "1")  # queued while the broker is down
    assert done.returncode == 0, done.stderr
    time.sleep(3)
    assert _job(cluster).state == JobState.queued
    cluster.rabbit.start()
    final = _wait_state(cluster, JobState.succeeded, 300, since_attempt=4)
    assert final.attempts == 5
    time.sleep(5)  # a redelivered message, if any, would have run by now
    assert _job(cluster).attempts == 5
    assert _attempts_run(cluster) == [1, 2, 3, 4, 5][: len(_attempts_run(cluster))]
    assert len(_segs(orthanc_clean)) == 1

    # the brain jobs (seconds each) outlasted RabbitMQ's 1 s consumer timeout: the channel was
    # closed and the message redelivered, yet every run above happened exactly once
    assert "timed out waiting for delivery acknowledgement" in cluster.rabbit.log_text() or (
        "consumer_timeout" in cluster.rabbit.log_text()
    ), cluster.rabbit.log_text()[-3000:]


def test_two_ingest_hosts_one_series_split_4x75(cluster: Cluster, tmp_path: Path) -> None:
    series_dir = tmp_path / "ct"
    files = peers.make_synthetic_ct_series(series_dir, n=300, rows=64, cols=64, seed=7)
    parts = [files[i * 75 : (i + 1) * 75] for i in range(4)]
    hosts = ["ingest", "ingest-b", "ingest", "ingest-b"]  # a round-robin TCP load balancer
    with Session(cluster.engine) as s:
        before = {x.id for x in s.exec(select(Series)).all()}
    with ThreadPoolExecutor(4) as pool:
        sent = list(
            pool.map(
                lambda i: peers.storescu(parts[i], cluster.addresses[hosts[i]], cluster.dicom_port, SPLIT_AE),
                range(4),
            )
        )
    assert all(done.returncode == 0 for done in sent), [d.stderr for d in sent]

    def new_series() -> list[Series]:
        with Session(cluster.engine) as s:
            return [x for x in s.exec(select(Series)).all() if x.id not in before]

    (series,) = wait_until(
        lambda: [x for x in new_series() if x.state == "complete"] or None, 120, "series complete"
    )
    time.sleep(6)  # past another quiet period: nothing re-opens or completes again
    (series,) = new_series()
    assert series.instance_count == 300 and series.revision == 1
    with Session(cluster.engine) as s:
        instances = s.exec(select(Instance).where(Instance.series_id == series.id)).all()
        assert len(instances) == 300
        assert len({i.sop_instance_uid for i in instances}) == 300
        jobs = s.exec(select(Job).where(Job.series_id == series.id)).all()
    assert len(jobs) == 1
