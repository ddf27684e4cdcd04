"""Scale-out benchmark: 8 studies through the brain pipeline with 1 and with 2 celery workers.

Each run starts, on a fresh PostgreSQL database (127.0.0.1:5432) and a fresh RabbitMQ vhost
(127.0.0.1:5672), a ``radloop serve --role ingest`` and N ``radloop worker`` processes
(``--concurrency 1``, ``workers.torch_threads: 1``), waits until every worker has its models warm,
then sends 8 copies of the 170-slice T1 of ``../shared/data/mr-brain-t1-philips`` (fresh Study,
Series and SOP Instance UIDs each) with DCMTK ``/usr/bin/storescu`` to ``RADLOOP_BRAIN``, one
association per study, back to back. It prints per run:

  studies/min   8 / (last job finished − first byte sent) × 60
  model         mean ``infer`` stage time of a job (deepbet's two networks)
  in-job        mean job wall time (claimed → recorded) − its model time: series → volume,
                pre/post-processing, SEG writing, the claim and the outcome rows
  dispatch      mean time from a job queued to claimed, for the jobs that found an idle worker
                (the first N): publish to RabbitMQ, delivery, the claim
  overhead      in-job + dispatch: the platform's share of one study (goal < 1 s)

With ``--backlog`` every study is received first and the workers start afterwards; studies/min is
then counted from the first job claimed to the last finished (the workers' own throughput, with
the ingest role no longer sharing the two cores), and dispatch is not measured (0).

and the speed-up of 2 workers over 1 (goal ≥ 1.8× on two cores). No Orthanc here: delivery is
the outbox's business and the same for 1 or 2 workers. On a shared, loaded machine every number
is inflated, and the speed-up is capped by the cores the other processes leave; say so with them.

Run (as root, with the project venv):
    PYTHONPATH=src .venv/bin/python bench/scale.py [--studies 8] [--workers 1,2]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e import BRAIN_AE, STORESCU, T1_DIR, reidentify  # noqa: E402 - bench/e2e.py, beside this file

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from radloop.core.models import Job, JobState, JobStep  # noqa: E402
from scaleout import postgres_database  # noqa: E402


def _epoch(at: datetime | None) -> float:
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "radloop.cli", *cmd],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run(workers: int, studies: list[Path], workdir: Path, backlog: bool = False) -> dict[str, float]:
    """One run with ``workers`` workers; its numbers. ``backlog``: every study is received (and its
    job queued in RabbitMQ) before the workers start, and the clock runs from the first job claimed
    to the last one finished, so the ingest role's CPU does not share the cores with the workers."""
    vhost = f"radloop_bench_{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with postgres_database() as db_name:
            port = peers.free_port()
            config: dict[str, Any] = {
                "data_dir": str(workdir / "data"),
                "database": {"url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"},
                "dicom": {
                    "host": "127.0.0.1",
                    "port": port,
                    "min_free_bytes": 0,
                    "listeners": [{"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"]}],
                },
                "workers": {
                    "executor": "celery",
                    "broker_url": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                    "torch_threads": 1,
                    "processes": 1,
                    "poll_interval_s": 0.2,
                },
            }
            config_path = workdir / "radloop.yaml"
            config_path.write_text(yaml.safe_dump(config))
            ingest_log = workdir / "ingest.log"
            procs.append(_start(["serve", "--role", "ingest", "-c", str(config_path)], ingest_log))
            peers.wait_for(
                lambda: "radloop ready" in ingest_log.read_text(), 120, interval=0.2, what="ingest"
            )
            engine = create_engine(config["database"]["url"])

            def start_workers() -> None:
                logs = [workdir / f"worker-{i}.log" for i in range(workers)]
                for i, log in enumerate(logs):
                    cmd = ["worker", "-c", str(config_path), "--name", f"w{i}", "--concurrency", "1"]
                    procs.append(_start(cmd, log))
                for log in logs:  # the pool process has loaded deepbet
                    peers.wait_for(
                        lambda log=log: "warm models:" in log.read_text(), 300, interval=0.5, what=str(log)
                    )

            def all_queued() -> bool:
                with Session(engine) as s:
                    return len(s.exec(select(Job)).all()) == len(studies)

            if not backlog:
                start_workers()
            t0 = time.time()
            for folder in studies:
                cmd = [
                    STORESCU,
                    "-R",
                    "-aet",
                    "BENCHSCU",
                    "-aec",
                    BRAIN_AE,
                    "+sd",
                    "+r",
                    "127.0.0.1",
                    str(port),
                ]
                subprocess.run([*cmd, str(folder)], env=peers.peer_env(), check=True, capture_output=True)
            if backlog:
                peers.wait_for(all_queued, 300, interval=0.5, what="every study's job queued")
                start_workers()

            def all_done() -> bool:
                with Session(engine) as s:
                    jobs = s.exec(select(Job)).all()
                failed = [j for j in jobs if j.state == JobState.failed]
                if failed:
                    raise RuntimeError(f"job {failed[0].id} failed: {failed[0].error}")
                return len(jobs) == len(studies) and all(j.state == JobState.succeeded for j in jobs)

            peers.wait_for(all_done, 3600, interval=0.5, what="every job succeeded")
            with Session(engine) as s:
                jobs = list(s.exec(select(Job).order_by(Job.started_at)).all())  # type: ignore[arg-type]
                steps = {j.id: s.exec(select(JobStep).where(JobStep.job_id == j.id)).all() for j in jobs}
            engine.dispose()
    finally:
        for proc in procs:
            _stop(proc)
        _rabbitmqctl("delete_vhost", vhost)
    end = max(_epoch(j.finished_at) for j in jobs)
    model = {j.id: sum(st.stages.get("infer", 0.0) for st in steps[j.id]) for j in jobs}
    wall = {j.id: _epoch(j.finished_at) - _epoch(j.started_at) for j in jobs}
    first = jobs[:workers]
    operators: dict[str, list[float]] = {}
    for job_steps in steps.values():
        for st in job_steps:
            operators.setdefault(st.operator_id, []).append(st.duration_s or 0.0)
    for name, durations in operators.items():
        print(f"  {workers} worker(s): step {name}: mean {statistics.mean(durations):.2f} s", flush=True)
    dispatch = [_epoch(j.started_at) - _epoch(j.created_at) for j in first]
    if backlog:
        t0 = min(_epoch(j.started_at) for j in jobs)
    return {
        "studies_per_min": len(studies) / (end - t0) * 60,
        "model_s": statistics.mean(model.values()),
        "in_job_s": statistics.mean(wall[i] - model[i] for i in model),
        # with a backlog, queued → claimed is the wait for a worker, not the dispatch: not measured
        "dispatch_s": 0.0 if backlog else statistics.mean(dispatch),
        "total_s": end - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, e.g. 1,2")
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="receive every study first, then start the workers; time from the first claim to the last"
        " job finished (the workers' own throughput, without the ingest role on the same cores)",
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="radloop-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        t1 = sorted(peers.gunzip_series(T1_DIR, tmp / "t1"))
        studies = [reidentify(t1, tmp / f"study-{i}") for i in range(args.studies)]
        results = {}
        for n in counts:
            workdir = tmp / f"run-{n}"
            workdir.mkdir()
            results[n] = r = run(n, studies, workdir, backlog=args.backlog)
            print(
                f"{n} worker(s): {args.studies} studies in {r['total_s']:.0f} s"
                f" = {r['studies_per_min']:.2f} studies/min;"
                f" per study: model {r['model_s']:.1f} s, in-job {r['in_job_s']:.2f} s,"
                f" dispatch {r['dispatch_s']:.2f} s, overhead {r['in_job_s'] + r['dispatch_s']:.2f} s",
                flush=True,
            )
        if 1 in results and 2 in results:
            speedup = results[2]["studies_per_min"] / results[1]["studies_per_min"]
            print(f"speed-up 2 workers / 1 worker: {speedup:.2f}x (goal >= 1.8x on two cores)")


if __name__ == "__main__":
    main()
