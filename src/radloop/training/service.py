"""``radloop train`` as a service: a store version fine-tuned on an export becomes a new version."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from radloop.core.errors import ConfigError
from radloop.inference.store import ModelStore, StoredModel
from radloop.training.dataset import load_training_data
from radloop.training.loop import EpochCallback, TrainConfig, fine_tune, patch_size
from radloop.training.network import load_trainable, save_network
from radloop.training.provenance import (
    PROVENANCE_FILE,
    EpochRecord,
    ExportRef,
    TrainingRecord,
    software_versions,
)


@dataclass(frozen=True)
class TrainRequest:
    """Fine-tune ``model`` version ``base_version`` on the export at ``export_root``."""

    model: str
    base_version: str
    export_root: Path
    config: TrainConfig
    version: str | None = None
    """The new version's name; default: the next number (``2`` after ``1``) or ``<base>.ft<n>``."""


def parse_base(text: str) -> tuple[str, str]:
    """``NAME@VERSION`` → (name, version); :class:`ConfigError` otherwise."""
    name, sep, version = text.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"--base must be NAME@VERSION (e.g. ct_organs@1), got {text!r}")
    return name, version


def next_version(store: ModelStore, name: str, base_version: str) -> str:
    """The next free version: one above the highest if all are numbers, else ``<base>.ft<n>``."""
    versions = store.versions(name)
    if versions and all(v.isdigit() for v in versions):
        return str(max(int(v) for v in versions) + 1)
    n = 1
    while f"{base_version}.ft{n}" in versions:
        n += 1
    return f"{base_version}.ft{n}"


def train_version(
    store: ModelStore, request: TrainRequest, on_epoch: EpochCallback | None = None
) -> tuple[StoredModel, TrainingRecord]:
    """Fine-tune, then add the best weights as a new immutable version with its provenance.

    Interrupted (Ctrl-C) after at least one epoch, the best weights so far are still added (the
    record says ``stopped: interrupted``); interrupted before, ``KeyboardInterrupt`` propagates.
    """
    base = store.get(request.model, request.base_version)
    version = request.version or next_version(store, request.model, request.base_version)
    if version in store.versions(request.model):
        raise ConfigError(f"model {request.model} already has version {version}; versions are immutable")
    data = load_training_data(request.export_root, base.spec)
    module = load_trainable(base, request.config.device)
    started = datetime.now(UTC)
    outcome = fine_tune(module, base.spec, data.training, data.validation, request.config, on_epoch)
    if not outcome.epochs:
        raise KeyboardInterrupt
    config = request.config
    record = TrainingRecord(
        model=request.model,
        version=version,
        base_version=base.spec.version,
        base_sha256=base.spec.sha256,
        export=ExportRef(name=data.name, path=str(data.root), content_hash=data.content_hash),
        cases=data.case_ids(),
        hyperparameters={
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "patience": config.patience,
            "optimizer": "Adam",
            "loss": "DiceCELoss",
            "batch_size": 1,
            "patch_size": list(patch_size(base.spec) or []) or None,
        },
        seed=config.seed,
        device=config.device,
        software=software_versions(),
        curves=[
            EpochRecord(epoch=e.epoch, loss=e.loss, val_dice=_number(e.val_dice)) for e in outcome.epochs
        ],
        base_val_dice=_number(outcome.base_val_dice),
        best_epoch=outcome.best_epoch,
        best_val_dice=_number(outcome.best_val_dice),
        stopped=outcome.stopped,
        started_at=started,
        wall_time_s=outcome.wall_time_s,
    )
    spec = base.spec.model_copy(
        update={
            "version": version,
            "format": "torchscript",
            "source": "torchscript",
            "file": "model.ts",
            "description": f"{base.spec.name}@{base.spec.version} fine-tuned on export {data.name}",
        }
    )
    with tempfile.TemporaryDirectory(prefix="radloop-train-") as tmp:
        network = save_network(module, Path(tmp) / "model.ts")
        stored = store.add_trained(spec, network, {PROVENANCE_FILE: record.to_json()})
    return stored, record


def _number(value: float) -> float | None:
    """NaN (no validation case) as None, which JSON can hold."""
    return None if math.isnan(value) else value
