"""Fine-tuning parts without a database: stages, version naming, intervals, Ctrl-C, refusals.

The loop end to end (reviews → export → train → shadow → compare → promote → rollback) is
``tests/integration/test_training_loop.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import tiny_models
from helpers_data import ellipsoid
from radloop.core.errors import ConfigError
from radloop.inference.stages import Stage
from radloop.inference.store import ModelStore
from radloop.training.evaluate import bootstrap_ci
from radloop.training.loop import EpochResult, TrainConfig
from radloop.training.provenance import read_provenance
from radloop.training.service import TrainRequest, next_version, parse_base, train_version

SPEC = tiny_models.segmenter_spec() | {"inputs": [{"name": "input__0", "shape": [-1, 1, -1, -1, -1]}]}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    models = ModelStore(tmp_path / "models")
    network = tiny_models.save_torchscript(tiny_models.SmoothThreshold(), tmp_path / "tiny.ts")
    models.add(network, "ct_organs", "1", SPEC)
    return models


def _export(root: Path, cases: int = 4) -> Path:
    """A MONAI datalist folder of 16³ spheres at 40 HU (the tiny network misses them)."""
    entries = []
    for i in range(cases):
        mask = ellipsoid((16, 16, 16), (8.0, 8.0, 7.0 + i / 2), (5.0, 5.0, 5.0))
        image = np.where(mask, 40.0, -100.0).astype(np.float32)
        for folder, array in (("imagesTr", image), ("labelsTr", mask.astype(np.uint8))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), root / folder / f"case{i}.nii.gz")
        entries.append({"image": f"imagesTr/case{i}.nii.gz", "label": f"labelsTr/case{i}.nii.gz"})
    datalist = {"training": entries[:-1], "validation": entries[-1:]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def test_stages_move_versions_and_rollback_returns_to_the_previous_production(store: ModelStore) -> None:
    store.add(store.get("ct_organs", "1").path, "ct_organs", "2", SPEC)
    assert store.serving_version("ct_organs") == "2"  # nothing staged: the newest, as before stages
    store.set_stage("ct_organs", "1", Stage.production, "a")
    store.set_stage("ct_organs", "2", Stage.shadow, "a")
    assert (store.serving_version("ct_organs"), store.shadow_versions("ct_organs")) == ("1", ["2"])
    assert store.find("ct_organs").spec.version == "1"  # type: ignore[union-attr]
    store.set_stage("ct_organs", "2", Stage.production, "b")
    assert (store.serving_version("ct_organs"), store.shadow_versions("ct_organs")) == ("2", [])
    assert store.rollback("ct_organs", "c")[0] == "1"
    store.set_stage("ct_organs", "2", Stage.retired, "d")
    with pytest.raises(ConfigError, match="no earlier production"):
        store.rollback("ct_organs", "e")
    assert [c.actor for c in store.stages("ct_organs").history] == ["a", "a", "b", "c", "d"]


def test_base_and_version_names() -> None:
    assert parse_base("deepbet_mask@1.0.2") == ("deepbet_mask", "1.0.2")
    with pytest.raises(ConfigError, match="NAME@VERSION"):
        parse_base("ct_organs")


def test_next_version_counts_up_or_suffixes_the_base(store: ModelStore) -> None:
    assert next_version(store, "ct_organs", "1") == "2"
    store.add(store.get("ct_organs", "1").path, "ct_organs", "1.0.2", SPEC)
    assert next_version(store, "ct_organs", "1.0.2") == "1.0.2.ft1"


def test_bootstrap_interval_is_reproducible_and_holds_the_mean() -> None:
    values = np.array([0.7, 0.8, 0.85, 0.9, 0.95])
    low, high = bootstrap_ci(values)
    assert (low, high) == bootstrap_ci(values) and low <= values.mean() <= high


def test_ctrl_c_after_an_epoch_still_stores_the_best_weights(store: ModelStore, tmp_path: Path) -> None:
    def interrupt(result: EpochResult) -> None:
        if result.epoch == 2:
            raise KeyboardInterrupt

    request = TrainRequest(
        "ct_organs", "1", _export(tmp_path / "export"), TrainConfig(epochs=5, learning_rate=0.01)
    )
    stored, record = train_version(store, request, interrupt)
    assert record.stopped == "interrupted" and len(record.curves) == 2
    assert record.best_val_dice is not None and record.best_val_dice > (record.base_val_dice or 0.0)
    assert read_provenance(stored) == record
    torch.jit.load(str(stored.path))  # loadable


def test_onnx_and_classifiers_are_refused_clearly(store: ModelStore, tmp_path: Path) -> None:
    onnx = tiny_models.save_onnx(
        tiny_models.SmoothThreshold(), torch.zeros(1, 1, 8, 8, 8), tmp_path / "t.onnx"
    )
    store.add(onnx, "ct_onnx", "1", tiny_models.segmenter_spec())
    export = _export(tmp_path / "export", cases=2)
    with pytest.raises(ConfigError, match="TorchScript networks only"):
        train_version(store, TrainRequest("ct_onnx", "1", export, TrainConfig(epochs=1)))
    with pytest.raises(ConfigError, match="not a MONAI datalist export"):
        train_version(store, TrainRequest("ct_organs", "1", tmp_path, TrainConfig(epochs=1)))
