"""End-to-end benchmark: from the last instance of a T1 series to the brain SEG stored in a PACS.

The 170-slice T1 of ``../shared/data/mr-brain-t1-philips`` is sent with DCMTK ``/usr/bin/storescu``
to ``RADLOOP_BRAIN`` of a real ``radloop serve`` (tests/radloop_proc.py) that delivers to a real
Orthanc (tests/peers.py). Every round starts a fresh server on an empty data folder and sends

  * a **cold** study: the first study after ``radloop serve`` has logged that it is ready;
  * a **warm** study: the same images re-identified (fresh Study, Series and SOP Instance UIDs),
    sent once the cold study's SEG is in Orthanc.

For each study it prints the split, from the job's own rows (``job``, ``job_step`` with its
``stages``, ``delivery``, ``series``) plus two clocks of its own: when storescu returned (the
association was released after the last acknowledgement) and when the SEG appeared in Orthanc
(Orthanc's REST API polled every 20 ms):

  send             storescu's wall time (first byte → association released)
  completion wait  association released → series completed (``series.completed_at``)
  queue wait       series completed → job claimed (``job.created_at`` is when it was queued)
  worker start     job claimed (``job.started_at``) → its first step began (``job_step.started_at``)
  <operator>       each step's duration, with its stages (load, pre, infer, invert, post)
  outbox send      job's last step ended → SEG delivery ``sent_at``
  end-to-end       association released → SEG found in Orthanc
  model inference  the ``infer`` stages of the job's steps
  overhead         end-to-end − model inference (the platform's share)

and the SEG writer's time (target ≤ 0.5 s). Targets (issue 14): warm overhead ≤ 1.0 s, cold
overhead ≤ 3.0 s. On a shared, loaded machine every number is inflated; say so with them.

Run (with the project venv):
    PYTHONPATH=src .venv/bin/python bench/e2e.py [--rounds 3]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from radloop.core.models import Delivery, Job, JobState, JobStep, Result, Series  # noqa: E402
from radloop_proc import RadloopServer  # noqa: E402

BRAIN_AE = "RADLOOP_BRAIN"
STORESCU = "/usr/bin/storescu"
T1_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mr-brain-t1-philips" / "series"
SEG_TIMEOUT_S = 300.0
START_TIMEOUT_S = 600.0  # worker processes load their models before "ready": slow on a loaded machine
POLL_S = 0.02


@dataclass
class Study:
    """One sent study and what its rows say about it."""

    label: str
    send_s: float = 0.0
    released_at: float = 0.0  # epoch seconds: storescu returned
    seg_at: float = 0.0  # epoch seconds: the SEG was first seen in Orthanc
    split: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)


def reidentify(src: list[Path], dst: Path) -> Path:
    """Copies of ``src`` in ``dst`` with fresh Study, Series and SOP Instance UIDs (a new study)."""
    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for path in src:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / path.name, enforce_file_format=True)
    return dst


def study_uid(folder: Path) -> str:
    return str(
        pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True).StudyInstanceUID
    )


def send(folder: Path, port: int, ae: str = BRAIN_AE) -> tuple[float, float]:
    """storescu the folder to ``ae`` in one association; (wall seconds, epoch when it returned)."""
    cmd = [STORESCU, "-R", "-aet", "BENCHSCU", "-aec", ae, "-to", "10", "-ta", "10", "+sd", "+r"]
    start = time.perf_counter()
    done = subprocess.run(
        [*cmd, "127.0.0.1", str(port), str(folder)], env=peers.peer_env(), capture_output=True, text=True
    )
    released = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr}")
    return time.perf_counter() - start, released


def wait_for_seg(orthanc: peers.OrthancServer, uid: str) -> float:
    """Poll Orthanc until a SEG of study ``uid`` is stored; the epoch time it was first seen."""
    query = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": uid, "Modality": "SEG"}}).encode()
    deadline = time.monotonic() + SEG_TIMEOUT_S
    while time.monotonic() < deadline:
        if json.loads(orthanc.request("POST", "/tools/find", query)):
            return time.time()
        time.sleep(POLL_S)
    raise TimeoutError(f"no SEG for study {uid} in Orthanc after {SEG_TIMEOUT_S:.0f} s")


def _epoch(at: datetime | None) -> float:
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _seg_sent(server: RadloopServer, uid: str) -> bool:
    """Whether the outbox has recorded the SEG's delivery (it may lag Orthanc's store by a commit)."""
    with Session(server.engine) as s:
        job = s.exec(select(Job).where(Job.study_instance_uid == uid)).one()
        sent = s.exec(
            select(Delivery.sent_at).join(Result).where(Result.job_id == job.id, Result.kind == "SEG")
        ).all()
    return bool(sent) and all(at is not None for at in sent)


def fill_split(study: Study, server: RadloopServer, uid: str) -> None:
    """The study's split from its series, job, step and delivery rows."""
    peers.wait_for(lambda: _seg_sent(server, uid), 10, interval=0.05, what="the SEG delivery's sent_at")
    with Session(server.engine) as s:
        job = s.exec(select(Job).where(Job.study_instance_uid == uid)).one()
        series = s.get(Series, job.series_id)
        assert series is not None
        if job.state != JobState.succeeded:
            raise RuntimeError(f"job {job.id} is {job.state}: {job.error}")
        steps = s.exec(select(JobStep).where(JobStep.job_id == job.id).order_by(col(JobStep.id))).all()
        deliveries = s.exec(
            select(Delivery).join(Result).where(Result.job_id == job.id, Result.kind == "SEG")
        ).all()
    split = study.split
    split["send"] = study.send_s
    split["completion wait"] = _epoch(series.completed_at) - study.released_at
    split["queue wait"] = _epoch(job.started_at) - _epoch(job.created_at)
    split["worker start"] = _epoch(steps[0].started_at) - _epoch(job.started_at)
    infer = 0.0
    for step in steps:
        split[step.operator_id] = step.duration_s or 0.0
        study.stages[step.operator_id] = dict(step.stages)
        infer += sum(v for k, v in step.stages.items() if k.split(".")[-1] == "infer")
    last_end = _epoch(steps[-1].started_at) + (steps[-1].duration_s or 0.0)
    sent = [_epoch(d.sent_at) for d in deliveries if d.sent_at is not None]
    split["outbox send"] = (max(sent) - last_end) if sent else float("nan")
    split["end-to-end"] = study.seg_at - study.released_at
    split["model inference"] = infer
    split["overhead"] = split["end-to-end"] - infer
    split["seg writer"] = next((st.duration_s or 0.0 for st in steps if st.operator == "writer.seg"), 0.0)


def config(orthanc: peers.OrthancServer) -> dict[str, Any]:
    return {
        "dicom": {
            "listeners": [{"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60}]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
    }


def run_round(n: int, orthanc: peers.OrthancServer, t1: list[Path], tmp: Path) -> list[Study]:
    cold_dir, warm_dir = reidentify(t1, tmp / f"r{n}-cold"), reidentify(t1, tmp / f"r{n}-warm")
    studies = []
    (tmp / f"r{n}-server").mkdir()
    server = RadloopServer(tmp / f"r{n}-server", config(orthanc))
    try:
        server.start(timeout=START_TIMEOUT_S)
        for label, folder in (("cold", cold_dir), ("warm", warm_dir)):
            study, uid = Study(label), study_uid(folder)
            study.send_s, study.released_at = send(folder, server.port)
            study.seg_at = wait_for_seg(orthanc, uid)
            fill_split(study, server, uid)
            studies.append(study)
            print(f"round {n} {label}: end-to-end {study.split['end-to-end']:.2f} s", flush=True)
    finally:
        server.stop()
    return studies


def report(studies: list[Study]) -> None:
    for label, target in (("cold", 3.0), ("warm", 1.0)):
        runs = [s for s in studies if s.label == label]
        print(f"\n== {label} ({len(runs)} rounds): median [min–max] seconds")
        for key in runs[0].split:
            values = [r.split[key] for r in runs]
            med = statistics.median(values)
            print(f"  {key:28s} {med:7.3f}  [{min(values):.3f}–{max(values):.3f}]")
            if key in runs[0].stages and runs[0].stages[key]:
                for stage in runs[0].stages[key]:
                    sv = [r.stages[key].get(stage, 0.0) for r in runs]
                    print(f"    {stage:26s} {statistics.median(sv):7.3f}  [{min(sv):.3f}–{max(sv):.3f}]")
        overhead = statistics.median(r.split["overhead"] for r in runs)
        writer = statistics.median(r.split["seg writer"] for r in runs)
        verdict = "met" if overhead <= target else "NOT met"
        print(f"  overhead target ≤ {target:.1f} s: {verdict} ({overhead:.2f} s)")
        print(f"  SEG writer target ≤ 0.5 s: {'met' if writer <= 0.5 else 'NOT met'} ({writer:.2f} s)")


def load_average() -> str:
    """The machine's 1/5/15-minute load averages (other users inflate every figure)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {load_average()} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="radloop-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        t1 = peers.gunzip_series(T1_DIR, tmp / "t1")
        studies: list[Study] = []
        with peers.OrthancServer(tmp / "orthanc") as orthanc:
            for n in range(1, args.rounds + 1):
                studies += run_round(n, orthanc, t1, tmp)
        report(studies)
    print(f"\nload average at end: {load_average()} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
