"""Per-pipeline timing table (like Clara Deploy's reference table): each reference pipeline that has
a real model, from the first byte sent to its results stored in a PACS.

* **brain-extraction** (deepbet 1.0.2, two TorchScript networks) on the real 170-slice sagittal T1
  of ``../shared/data/mr-brain-t1-philips``, sent to ``RADLOOP_BRAIN``; result: SEG.
* **prostate-seg** (TAPS of lavlab-taps 1.1.2, ONNX, sliding window 128 × 128 × 32) on the
  synthetic 16-slice axial T2-like pelvis of ``tests/helpers_prostate.py`` (no real prostate MR is
  in the test data), sent to ``RADLOOP_PROSTATE``; results: SEG + SR. The network finds no prostate
  in a phantom, so the benchmark runs the reference pipeline with ``threshold: 0.002`` and
  ``on_implausible: flag`` (the reference would stop at "result implausible"): same work, and the
  SEG and SR are written and delivered.

Each study goes with DCMTK ``storescu`` to a real ``radloop serve`` (tests/radloop_proc.py) that
delivers to a real Orthanc by C-STORE. Per round and backend a fresh server takes a **cold** study
(first after start: models load) and then a **warm** one (the same images, new UIDs). Columns,
from the job's own rows (``series``, ``job``, ``job_step`` with its ``stages``, ``delivery``):

  receive   storescu's wall time (first byte → association released)
  queue     association released → the job's first step started (series completion, queueing,
            worker pick-up)
  load      DICOM → volume (``dicom.series_to_volume``) + model loading (``load`` stages)
  pre       pre-processing stages of the model step (orientation, resampling, normalisation, crop)
  infer     network stages (all windows / both networks)
  post      post-processing stages (smoothing, inverse resampling, threshold, components)
  write     the writers' steps (SEG, SR)
  deliver   the job's last step ended → the last result's delivery ``sent_at``
  total     receive + (association released → last result delivered)

Backends: ``in process`` (ONNX Runtime / TorchScript in the worker; the default) and, with
``--triton``, a local CPU Triton (``radloop.inference.triton_local``; its environment is built on
first use, minutes) serving the same models with dynamic batching. The table names the machine;
no GPU was lent to the session that wrote this, so every figure is CPU.

``--speed`` instead times the prostate network alone on a wider phantom (16 × 100 × 140 at
3.6 × 0.9 × 0.9 mm: 2 windows), in this process: the package's own ``taps.segment`` (one window per
ONNX Runtime call, default session) against radloop's operator with 1 and 4 windows per call and
ONNX Runtime's intra-op threads left at its default (one per core) or set to 1.

Run: PYTHONPATH=src .venv/bin/python bench/pipelines.py [--rounds 1] [--triton] [--only NAME] [--speed]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import _epoch, reidentify, send, study_uid, wait_for_seg  # noqa: E402

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from helpers_prostate import pelvis, pelvis_affine, write_mr_series  # noqa: E402
from radloop.core.models import Delivery, Job, JobState, JobStep, Result, Series  # noqa: E402
from radloop_proc import RadloopServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T1_DIR = ROOT.parent / "shared" / "data" / "mr-brain-t1-philips" / "series"
PROSTATE_REFERENCE = ROOT / "src/radloop/pipelines/reference/prostate-seg.yaml"
PROSTATE_BENCH = "prostate-seg-bench"
COLUMNS = ("receive", "queue", "load", "pre", "infer", "post", "write", "deliver", "total")


@dataclass(frozen=True)
class Case:
    """One pipeline: its AE, pipeline name, the models it loads, and how to make a study of it."""

    pipeline: str
    ae: str
    models: tuple[str, ...]
    model_step: str
    writers: tuple[str, ...]


CASES = (
    Case("brain-extraction", "RADLOOP_BRAIN", ("deepbet_bbox", "deepbet_mask"), "brain", ("seg",)),
    Case(PROSTATE_BENCH, "RADLOOP_PROSTATE", ("taps_prostate",), "prostate", ("seg", "sr")),
)


@dataclass
class Run:
    """One study through one pipeline on one backend."""

    case: str
    backend: str
    label: str
    split: dict[str, float] = field(default_factory=dict)


def prostate_bench_pipeline(folder: Path) -> Path:
    """The reference prostate pipeline with threshold 0.002 and on_implausible: flag (see above)."""
    spec = yaml.safe_load(PROSTATE_REFERENCE.read_text())
    spec["name"] = PROSTATE_BENCH
    for step in spec["operators"]:
        if step["use"] == "taps.prostate_segmentation":
            step["with"] = {**step.get("with", {}), "threshold": 0.002, "on_implausible": "flag"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PROSTATE_BENCH}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _all_sent(server: RadloopServer, uid: str) -> bool:
    with Session(server.engine) as s:
        job = s.exec(select(Job).where(Job.study_instance_uid == uid)).one()
        sent = s.exec(select(Delivery.sent_at).join(Result).where(Result.job_id == job.id)).all()
    return bool(sent) and all(at is not None for at in sent)


def split_of(run: Run, case: Case, server: RadloopServer, uid: str, send_s: float, released: float) -> None:
    """The run's columns from its series, job, step and delivery rows."""
    peers.wait_for(lambda: _all_sent(server, uid), 120, interval=0.05, what="every result delivered")
    with Session(server.engine) as s:
        job = s.exec(select(Job).where(Job.study_instance_uid == uid)).one()
        if job.state != JobState.succeeded:
            raise RuntimeError(f"job {job.id} is {job.state}: {job.error}")
        series = s.get(Series, job.series_id)
        assert series is not None
        steps = s.exec(select(JobStep).where(JobStep.job_id == job.id).order_by(col(JobStep.id))).all()
        sent = [
            _epoch(at)
            for at in s.exec(select(Delivery.sent_at).join(Result).where(Result.job_id == job.id)).all()
        ]
    by_id = {step.operator_id: step for step in steps}
    stages = dict(by_id[case.model_step].stages)
    split = run.split
    split["receive"] = send_s
    split["queue"] = _epoch(steps[0].started_at) - released
    split["load"] = (by_id["volume"].duration_s or 0.0) + stages.get("load", 0.0)
    for stage in ("pre", "infer", "post"):
        split[stage] = stages.get(stage, 0.0)
    split["write"] = sum(by_id[w].duration_s or 0.0 for w in case.writers)
    last_end = max(_epoch(st.started_at) + (st.duration_s or 0.0) for st in steps)
    split["deliver"] = max(sent) - last_end
    split["total"] = send_s + (max(sent) - released)


def config(
    orthanc: peers.OrthancServer, pipelines_dir: Path, triton: dict[str, Any] | None
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dicom": {
            "listeners": [{"ae_title": c.ae, "pipelines": [c.pipeline], "quiet_period_s": 60} for c in CASES]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"dirs": [str(pipelines_dir)], "destinations": {c.pipeline: ["pacs"] for c in CASES}},
    }
    if triton is not None:
        cfg["inference"] = triton
    return cfg


def run_backend(
    backend: str,
    cases: list[Case],
    studies: dict[str, list[Path]],
    orthanc: peers.OrthancServer,
    tmp: Path,
    rounds: int,
    triton: dict[str, Any] | None,
) -> list[Run]:
    runs = []
    for n in range(1, rounds + 1):
        for case in cases:
            workdir = tmp / f"{backend.replace(' ', '-')}-{case.pipeline}-{n}"
            workdir.mkdir()
            server = RadloopServer(workdir, config(orthanc, tmp / "pipelines", triton))
            server.start(timeout=600)  # workers load their models before "ready"; a loaded machine
            try:
                for label in ("cold", "warm"):
                    folder = reidentify(studies[case.pipeline], workdir / label)
                    uid = study_uid(folder)
                    send_s, released = send(folder, server.port, case.ae)
                    wait_for_seg(orthanc, uid)
                    run = Run(case.pipeline, backend, label)
                    split_of(run, case, server, uid, send_s, released)
                    runs.append(run)
                    print(
                        f"{backend} {case.pipeline} round {n} {label}: total {run.split['total']:.1f} s",
                        flush=True,
                    )
            finally:
                server.stop()
    return runs


def triton_settings(tmp: Path, cases: list[Case]) -> tuple[Any, dict[str, Any]]:
    """A local CPU Triton serving the cases' models (dynamic batching), and the settings using it."""
    from radloop.inference.model_import import import_taps
    from radloop.inference.packaged import packaged_models
    from radloop.inference.store import ModelStore
    from radloop.inference.triton_local import DEFAULT_VENV, LocalTriton, ensure_venv
    from radloop.inference.triton_repo import build_repository

    store = ModelStore(tmp / "models")
    for model in packaged_models().values():
        store.add_packaged(model)
    import_taps(store)
    names = [m for c in cases for m in c.models]
    build_repository(store, tmp / "repo", "python", names, include_packaged=False)
    server = LocalTriton(tmp / "repo", ensure_venv(DEFAULT_VENV), tmp / "triton")
    return server, {"models": {m: {"backend": "triton", "url": "grpc://placeholder"} for m in names}}


def report(runs: list[Run]) -> None:
    cpu = _cpu_name()
    print(f"\nMachine: {cpu}, {os.cpu_count()} CPUs, {platform.machine()}; no GPU (none was lent).")
    print("Median seconds over rounds (cold = first study after start, models load; warm = second).\n")
    names = " | ".join(f"{c:>7s}" for c in COLUMNS)
    header = f"| {'pipeline':20s} | {'backend':10s} | {'study':5s} | {names} |"
    print(header)
    print("|" + "|".join("-" * len(part) for part in header.split("|")[1:-1]) + "|")
    keys = sorted({(r.case, r.backend, r.label) for r in runs}, key=lambda k: (k[0], k[1], k[2] != "cold"))
    for case, backend, label in keys:
        chosen = [r for r in runs if (r.case, r.backend, r.label) == (case, backend, label)]
        cells = [f"{statistics.median(r.split[c] for r in chosen):7.2f}" for c in COLUMNS]
        print(f"| {case:20s} | {backend:10s} | {label:5s} | " + " | ".join(cells) + " |")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def speed(tmp: Path, repeat: int) -> None:
    """The prostate network alone: the package's ``segment`` vs radloop's operator (see the doc)."""
    import nibabel as nib
    import taps

    from radloop.core.geometry import lps_to_ras
    from radloop.inference.onnx_runtime import OnnxRuntimeBackend
    from radloop.inference.packaged import TAPS_MODEL, taps_model_path
    from radloop.pipelines.operators.prostate import ProstateOptions, segment_prostate
    from radloop.pipelines.ports import SourceFrame, Volume
    from radloop.pipelines.timing import StageTimer

    shape, spacing = (16, 100, 140), (3.6, 0.9, 0.9)
    array, affine = pelvis(shape, spacing), pelvis_affine(shape, spacing)
    nifti = tmp / "speed.nii.gz"
    nib.save(nib.Nifti1Image(array, lps_to_ras(affine)), nifti)
    frames = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.4", f"1.2.{i}") for i in range(shape[0]))
    volume = Volume(array, affine, "1.2.3", _series_ref(), "MR", frames, ())
    rows: list[tuple[str, float, str]] = []
    for _ in range(repeat):
        start = time.perf_counter()
        with contextlib.suppress(taps.inference.BlankMaskError):  # a phantom: no prostate, same work
            taps.segment(nifti, tmp / "speed-mask.nii.gz", None, device="cpu", exact=True)
        rows.append(("taps.segment (package, 1 window/call)", time.perf_counter() - start, ""))
        for threads, batches in ((0, (1, 4)), (1, (4,))):
            backend = OnnxRuntimeBackend(taps_model_path(), TAPS_MODEL, "1.1.2", threads=threads)
            for batch in batches:
                timer = StageTimer()
                start = time.perf_counter()
                segment_prostate(volume, backend, ProstateOptions(sw_batch_size=batch), timer)
                label = f"radloop, {batch} window(s)/call, ORT threads {threads or 'default'}"
                rows.append((label, time.perf_counter() - start, timer.summary()))
    print(f"\nProstate network alone, {shape} phantom, {_cpu_name()}, {os.cpu_count()} CPUs; no GPU.")
    for label, seconds, stages in rows:
        print(f"  {label:48s} {seconds:7.1f} s  {stages}")


def _series_ref() -> Any:
    from radloop.core.refs import SeriesRef

    return SeriesRef("1.2.3", "1.2.3.4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--triton", action="store_true", help="also through a local CPU Triton")
    parser.add_argument("--only", choices=[c.pipeline for c in CASES], action="append")
    parser.add_argument("--speed", action="store_true", help="only the prostate network, package vs radloop")
    args = parser.parse_args()
    if args.speed:
        with tempfile.TemporaryDirectory(prefix="radloop-speed-") as tmp_name:
            speed(Path(tmp_name), args.rounds)
        return
    cases = [c for c in CASES if not args.only or c.pipeline in args.only]
    with tempfile.TemporaryDirectory(prefix="radloop-pipelines-") as tmp_name:
        tmp = Path(tmp_name)
        prostate_bench_pipeline(tmp / "pipelines")
        studies = {
            "brain-extraction": peers.gunzip_series(T1_DIR, tmp / "t1"),
            PROSTATE_BENCH: write_mr_series(tmp / "t2", pelvis(), pelvis_affine()),
        }
        runs: list[Run] = []
        with peers.OrthancServer(tmp / "orthanc") as orthanc:
            runs += run_backend("in process", cases, studies, orthanc, tmp, args.rounds, None)
            if args.triton:
                server, settings = triton_settings(tmp, cases)
                with server:
                    for entry in settings["models"].values():
                        entry["url"] = server.grpc_url
                    runs += run_backend("Triton", cases, studies, orthanc, tmp, args.rounds, settings)
        report(runs)


if __name__ == "__main__":
    main()
