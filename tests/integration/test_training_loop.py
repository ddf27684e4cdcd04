"""Closing the loop on the CT pipeline's tiny test network: review → export → train → shadow → promote.

Twelve synthetic 32³ CT patients each hold one sphere of known size at 30–50 HU, below what the
fixed-weight test network (``tiny_models.SmoothThreshold``, ≈ 53.5 HU) labels: its AI mask is
poor, a reviewer edits every case to the true sphere (the review app's own functions), and the
MONAI export of those reviews is what ``radloop train`` fine-tunes ``ct_organs@1`` on. The tests
then check the new version beats its base on the held-out split, carries its provenance, runs as
``shadow`` beside production without a single delivery row, is compared with bootstrap
intervals, is promoted (the next job uses it) and rolled back; and that training is reproducible
bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import torch
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from typer.testing import CliRunner

import helpers_reviews as hr
import peers
import tiny_models
from helpers_data import ellipsoid
from radloop.cli import app
from radloop.connector.store import InstanceStore
from radloop.core.db import session_scope
from radloop.core.models import AuditEvent, Delivery, Job, JobState, Result, ReviewDecision
from radloop.core.settings import Settings, load_settings
from radloop.feedback.shadow_quality import shadow_quality
from radloop.inference.store import ModelStore
from radloop.pipelines.runner import JobRunner
from radloop.runtime import Runtime
from radloop.training.loop import TrainConfig
from radloop.training.service import TrainRequest, train_version
from radloop.training_export import ExportFormat, ExportRequest, export_dataset
from radloop.viewer_launch.review_cache import ReviewCache

pytestmark = pytest.mark.slow

SIZE = 32
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
cli = CliRunner()


@dataclass(frozen=True)
class Loop:
    """A data folder with reviewed CT cases, their MONAI export and a store holding ct_organs@1."""

    config: Path
    settings: Settings
    engine: Engine
    export: Path
    store: ModelStore
    runtime: Runtime


def _phantom(seed: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.bool_]]:
    """HU + 1024 of a 32³ CT: −100 HU with noise, one sphere at 30–50 HU; and the sphere."""
    rng = np.random.default_rng(seed)
    centre = tuple(float(c) for c in rng.uniform(12, 20, size=3))
    mask = ellipsoid((SIZE,) * 3, centre, (float(rng.uniform(6, 9)),) * 3)
    hu = np.full((SIZE,) * 3, -100.0) + rng.normal(0.0, 5.0, size=(SIZE,) * 3)
    hu[mask] = float(rng.uniform(30, 50)) + rng.normal(0.0, 5.0, size=int(mask.sum()))
    return np.rint(hu + 1024).astype(np.int16), mask


def _ct_series(folder: Path, seed: int, patient: str) -> list[Path]:
    """A valid synthetic CT series (peers') with the phantom's voxels and its own patient."""
    files = peers.make_synthetic_ct_series(folder, n=SIZE, rows=SIZE, cols=SIZE, seed=seed)
    stored, _ = _phantom(seed)
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PixelData = stored[index].tobytes()
        ds.PatientID, ds.PatientName = patient, f"Loop^{patient}"
        ds.save_as(path, enforce_file_format=True)
    return files


def _job(engine: Engine, series: hr.StoredSeries, key: str) -> int:
    with session_scope(engine) as s:
        job = Job(
            pipeline="ct-organ-seg",
            pipeline_version="1.0.0",
            series_id=series.series_id,
            study_instance_uid=series.ref.StudyInstanceUID,
            series_instance_uid=series.ref.SeriesInstanceUID,
            idempotency_key=key,
            state=JobState.running,
            attempts=1,
        )
        s.add(job)
        s.flush()
        return int(job.id or 0)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Loop:
    root = tmp_path_factory.mktemp("loop")
    config = root / "radloop.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "secret_key": "training-loop-test-secret-key",
                "destinations": [{"name": "pacs", "kind": "folder", "path": str(root / "pacs")}],
                "pipelines": {"destinations": {"ct-organ-seg": ["pacs"]}},
            }
        )
    )
    settings = load_settings(config)
    runtime = Runtime.build(settings, migrate=True)
    engine = runtime.engine
    store = InstanceStore(settings.data_dir, engine)
    for case in range(12):
        series = hr.ingest(store, _ct_series(root / "dicom" / str(case), case, f"LOOP-{case:03d}"))
        _, truth = _phantom(case)
        ai_mask = ellipsoid((SIZE,) * 3, tuple(float(c) for c in np.argwhere(truth).mean(axis=0)), (3.0,) * 3)
        result = hr.add_ai_result(
            engine, settings.data_dir, hr.add_job(engine, series, f"loop-{case}"), series, ai_mask
        )
        hr.review(
            settings,
            engine,
            result,
            series,
            ReviewDecision.edited,
            "rev@hospital.example",
            T0 + timedelta(minutes=case),
            truth,
        )
    export = settings.data_dir / "exports" / "ct-reviewed"  # what --export ct-reviewed names
    export_dataset(
        settings,
        engine,
        ExportRequest(
            pipeline=hr.PIPELINE, out_dir=export, format=ExportFormat.monai, val_fraction=0.25, seed=1
        ),
    )
    models = ModelStore(settings.inference.store_dir(settings.data_dir))
    network = tiny_models.save_torchscript(tiny_models.SmoothThreshold(), root / "tiny.ts")
    spec = tiny_models.segmenter_spec() | {"inputs": [{"name": "input__0", "shape": [-1, 1, -1, -1, -1]}]}
    models.add(network, "ct_organs", "1", spec)
    return Loop(config, settings, engine, export, models, runtime)


def _cli(loop: Loop, *args: str) -> str:
    result = cli.invoke(app, [*args, "--config", str(loop.config)])
    assert result.exit_code == 0, f"{args}: {result.output} {result.exception!r}"
    return result.output


def test_train_beats_its_base_on_the_held_out_split_and_records_provenance(loop: Loop) -> None:
    out = _cli(
        loop,
        "train",
        "--base",
        "ct_organs@1",
        "--export",
        "ct-reviewed",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--seed",
        "3",
        "--json",
    )
    record = json.loads(out[out.index("{") :])
    assert record["version"] == "2" and record["base_version"] == "1"
    assert record["best_val_dice"] > record["base_val_dice"] + 0.3, record["curves"]
    assert len(record["cases"]["training"]) == 9 and len(record["cases"]["validation"]) == 3
    assert record["export"]["content_hash"] and record["seed"] == 3 and record["software"]["monai"]
    shown = json.loads(_cli(loop, "models", "show", "ct_organs", "--version", "2"))
    assert shown["training"]["curves"] == record["curves"] and shown["stage"] is None


def test_same_export_seed_and_base_give_the_same_weights(loop: Loop, tmp_path: Path) -> None:
    weights = []
    for version in ("a", "b"):
        store = ModelStore(tmp_path / version)
        store.add(
            loop.store.get("ct_organs", "1").path,
            "ct_organs",
            "1",
            loop.store.get("ct_organs", "1").spec.model_dump(),
        )
        config = TrainConfig(epochs=1, learning_rate=0.01, seed=5)
        stored, _ = train_version(store, TrainRequest("ct_organs", "1", loop.export, config))
        weights.append(torch.jit.load(str(stored.path)).state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_shadow_runs_beside_production_is_never_delivered_then_promote_and_rollback(
    loop: Loop, tmp_path: Path
) -> None:
    if "2" not in loop.store.versions("ct_organs"):
        pytest.skip("needs the version trained by the first test")
    _cli(loop, "models", "stage", "ct_organs", "1", "production", "--force", "--by", "lead@hospital.example")
    _cli(loop, "models", "stage", "ct_organs", "2", "shadow", "--by", "lead@hospital.example")
    store = InstanceStore(loop.settings.data_dir, loop.engine)
    runner = JobRunner(loop.settings, loop.engine, loop.runtime.catalog)

    def run_new_series(n: int) -> list[Result]:
        series = hr.ingest(store, _ct_series(tmp_path / f"new{n}", 100 + n, f"NEW-{n}"))
        ids = runner.run(_job(loop.engine, series, f"new-{n}"))
        with session_scope(loop.engine) as s:
            results = list(s.exec(select(Result).where(col(Result.id).in_(ids))).all())
            for r in results:
                deliveries = s.exec(select(Delivery).where(Delivery.result_id == r.id)).all()
                assert (len(deliveries) == 0) == (r.kind == "shadow-seg"), (r.kind, deliveries)
                s.expunge(r)
            return results

    def algorithm_version(result: Result) -> str:
        ds = pydicom.dcmread(loop.settings.data_dir / result.path, stop_before_pixels=True)
        return str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion)

    first = run_new_series(1)
    kinds = sorted(r.kind for r in first)
    assert kinds == ["SEG", "shadow-seg"], kinds
    shadow = next(r for r in first if r.kind == "shadow-seg")
    production = next(r for r in first if r.kind == "SEG")
    assert (algorithm_version(production), algorithm_version(shadow)) == ("1", "2")
    assert "SHADOW ct_organs@2" in str(
        pydicom.dcmread(loop.settings.data_dir / shadow.path).SeriesDescription
    )
    # The review app shows it beside the production SEG as a marked second opinion, and the quality
    # page measures it against production (no review yet: agreement only).
    (opinion,) = ReviewCache(loop.settings, loop.engine).facts(int(production.id or 0))["shadows"]
    assert (opinion["result_id"], opinion["model"], opinion["error"]) == (
        shadow.id,
        {"name": "ct_organs", "version": "2"},
        "",
    )
    (versus,) = shadow_quality(loop.engine, loop.settings.data_dir)
    assert (versus.model_name, versus.production_version, versus.shadow_version) == ("ct_organs", "1", "2")
    assert (versus.overall.cases, versus.overall.with_final) == (1, 0)
    assert versus.overall.agreement == pytest.approx(opinion["dice_vs_ai"], abs=1e-12)

    refused = cli.invoke(app, ["models", "promote", "ct_organs", "2", "--config", str(loop.config)])
    assert refused.exit_code != 0 and "no evaluation" in str(refused.exception)
    compared = _cli(
        loop, "models", "compare", "ct_organs", "--versions", "1,2", "--dataset", str(loop.export)
    )
    assert "95% CI" in compared and "paired Dice difference" in compared
    evaluation = json.loads(next((loop.store.root / "ct_organs" / "evaluations").glob("*.json")).read_text())
    scores = {s["version"]: s for s in evaluation["scores"]}
    assert scores["2"]["mean_dice"] > scores["1"]["mean_dice"]
    assert len(evaluation["cases"]) == 3  # the validation split: neither version trained on it

    _cli(loop, "models", "promote", "ct_organs", "2", "--by", "lead@hospital.example")
    assert loop.store.serving_version("ct_organs") == "2"
    second = run_new_series(2)
    assert [r.kind for r in second] == ["SEG"]  # 2 left shadow when it became production
    assert algorithm_version(second[0]) == "2"
    _cli(loop, "models", "rollback", "ct_organs", "--by", "lead@hospital.example")
    assert loop.store.serving_version("ct_organs") == "1"
    assert [algorithm_version(r) for r in run_new_series(3)] == ["1"]
    with session_scope(loop.engine) as s:
        actions = [e.action for e in s.exec(select(AuditEvent)).all()]
    assert {"model.stage.shadow", "model.stage.production", "model.rollback"} <= set(actions)
