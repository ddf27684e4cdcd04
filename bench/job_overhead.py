"""Platform CPU time of a warm brain-extraction job, in one process (benchmark, not a test).

The 170-slice T1 of ``../shared/data/mr-brain-t1-philips`` is stored as the SCP stores it, and
``JobRunner.run`` runs the ``brain-extraction`` pipeline on it: once cold (models load, the two
networks run and their outputs are kept), then ``--jobs`` warm jobs in which the networks' outputs
are replayed instead of computed. What is left is everything the platform does around the model:
series → volume, deepbet's pre- and post-processing, the SEG writer, and the job's own rows and
files. The process freezes its start-up objects after the cold job, as a worker process does
(:func:`radloop.pipelines.executor.freeze_start_up_objects`, where the code has it).

Prints CPU and wall seconds per warm job (mean) and each step's median seconds from the job's
``job_step`` rows; ``--profile`` adds a cProfile of one more warm job (``--sort`` key).

    PYTHONPATH=src .venv/bin/python bench/job_overhead.py [--jobs 8] [--profile] [--sort tottime]

To compare with another checkout's code, run this same file with ``PYTHONPATH=<other>/src``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import col, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers_reviews  # noqa: E402 - lives in tests/, put on sys.path just above
import peers  # noqa: E402
from radloop.connector.store import InstanceStore  # noqa: E402
from radloop.core.db import session_scope  # noqa: E402
from radloop.core.models import Job, JobState, JobStep  # noqa: E402
from radloop.core.settings import load_settings  # noqa: E402
from radloop.pipelines.operators import brain_extraction  # noqa: E402
from radloop.pipelines.runner import JobRunner  # noqa: E402
from radloop.runtime import Runtime  # noqa: E402

PIPELINE = "brain-extraction"


class ReplayedNetworks:
    """``brain_probability`` that computes each network's output once and then replays it."""

    def __init__(self) -> None:
        self.compute = brain_extraction.brain_probability
        self.outputs: dict[tuple[int, ...], Any] = {}

    def __call__(self, backend: Any, image: Any) -> Any:
        key = tuple(image.shape)
        if key not in self.outputs:
            self.outputs[key] = self.compute(backend, image)
        return self.outputs[key]


def _new_job(runtime: Runtime, series: helpers_reviews.StoredSeries) -> int:
    with session_scope(runtime.engine) as s:
        job = Job(
            pipeline=PIPELINE,
            pipeline_version="1.0.0",
            series_id=series.series_id,
            study_instance_uid=series.ref.StudyInstanceUID,
            series_instance_uid=series.ref.SeriesInstanceUID,
            idempotency_key=uuid.uuid4().hex,
            state=JobState.running,
            attempts=1,
        )
        s.add(job)
        s.flush()
        return int(job.id or 0)


def _freeze() -> str:
    try:
        from radloop.pipelines.executor import freeze_start_up_objects
    except ImportError:
        return "this code does not freeze its start-up objects"
    return f"{freeze_start_up_objects()} start-up objects frozen"


def _step_medians(runtime: Runtime, job_ids: list[int]) -> dict[str, float]:
    seconds: dict[str, list[float]] = {}
    with session_scope(runtime.engine) as s:
        for step in s.exec(select(JobStep).where(col(JobStep.job_id).in_(job_ids))).all():
            seconds.setdefault(step.operator_id, []).append(step.duration_s or 0.0)
            for stage, value in (step.stages or {}).items():
                if stage not in ("load", "infer"):
                    seconds.setdefault(f"{step.operator_id}.{stage}", []).append(value)
    return {name: round(statistics.median(values), 3) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="warm jobs measured")
    parser.add_argument("--profile", action="store_true", help="cProfile one more warm job")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="radloop-job-overhead-") as tmp_name:
        root = Path(tmp_name)
        config = {
            "data_dir": str(root / "data"),
            "secret_key": "job-overhead-bench-secret-key-0123456789",
            "destinations": [{"name": "pacs", "kind": "folder", "path": str(root / "pacs")}],
            "pipelines": {"destinations": {PIPELINE: ["pacs"]}},
        }
        (root / "radloop.yaml").write_text(yaml.safe_dump(config))
        settings = load_settings(root / "radloop.yaml")
        runtime = Runtime.build(settings, migrate=True)
        t1 = peers.gunzip_series(peers.shared_data_dir() / "mr-brain-t1-philips" / "series", root / "t1")
        series = helpers_reviews.ingest(InstanceStore(settings.data_dir, runtime.engine), t1)
        brain_extraction.brain_probability = ReplayedNetworks()
        runner = JobRunner(settings, runtime.engine, runtime.catalog)
        start = time.perf_counter()
        runner.run(_new_job(runtime, series))
        print(f"cold job (models load, networks run): {time.perf_counter() - start:.2f} s; {_freeze()}")
        job_ids = [_new_job(runtime, series) for _ in range(args.jobs)]
        wall, cpu = time.perf_counter(), time.process_time()
        for job_id in job_ids:
            runner.run(job_id)
        wall, cpu = (time.perf_counter() - wall) / args.jobs, (time.process_time() - cpu) / args.jobs
        print(f"warm job, networks replayed: CPU {cpu:.3f} s, wall {wall:.3f} s (mean of {args.jobs})")
        print(f"median step seconds: {_step_medians(runtime, job_ids)}")
        if args.profile:
            job_id = _new_job(runtime, series)
            profile = cProfile.Profile()
            profile.runcall(runner.run, job_id)
            pstats.Stats(profile).sort_stats(args.sort).print_stats(40)
    print(f"load average at end: {os.getloadavg()} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
