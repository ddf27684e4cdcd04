"""Evidence before promotion: two versions of a model on the reviewed cases neither learnt from.

The reference labels are the reviewers' final masks (accepted AI masks and edited masks), as a
training export holds them. Cases either version was trained on (its provenance) are left out.
Per case: foreground Dice and relative volume error (predicted − reviewed voxels, % of reviewed);
per version: the mean with a percentile bootstrap 95 % interval; paired: the mean Dice difference
(second − first) with its own bootstrap interval, and how many cases each version wins.

The comparison is written to ``<store>/<name>/evaluations/<a>-vs-<b>.json``;
:func:`has_evaluation` is what ``radloop models promote`` checks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from radloop.core.errors import ConfigError
from radloop.inference.store import ModelStore
from radloop.training.dataset import TrainingCase, load_training_data
from radloop.training.loop import dice, predict
from radloop.training.network import load_trainable
from radloop.training.provenance import read_provenance

EVALUATIONS_DIR = "evaluations"
BOOTSTRAP_RESAMPLES = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseScore(_Strict):
    """One held-out case: Dice and relative volume error (%) of each version."""

    case_id: str
    dice: dict[str, float]
    volume_error_pct: dict[str, float]


class VersionScore(_Strict):
    """One version's means over the cases, with bootstrap 95 % intervals."""

    version: str
    mean_dice: float
    dice_ci95: tuple[float, float]
    mean_volume_error_pct: float
    volume_error_ci95: tuple[float, float]


class Comparison(_Strict):
    """``radloop models compare``: both versions, per case and overall, and the paired difference."""

    model: str
    versions: tuple[str, str]
    export: str
    export_hash: str
    cases: list[CaseScore]
    scores: list[VersionScore]
    dice_difference: float
    dice_difference_ci95: tuple[float, float]
    wins: dict[str, int]
    evaluated_at: datetime


def compare_versions(
    store: ModelStore, name: str, versions: tuple[str, str], export_root: Path, device: str = "cpu"
) -> Comparison:
    """Evaluate both versions on the export's cases neither was trained on; save and return it."""
    stored = [store.get(name, v) for v in versions]
    trained_on: set[str] = set()
    for s in stored:
        record = read_provenance(s)
        if record is not None:
            trained_on.update(record.cases.get("training", []))
    data = load_training_data(export_root, stored[0].spec)
    cases = [c for c in (*data.training, *data.validation) if c.case_id not in trained_on]
    if not cases:
        raise ConfigError(
            f"export {data.name} has no reviewed case that neither {name}@{versions[0]} nor "
            f"{name}@{versions[1]} was trained on"
        )
    scores: list[CaseScore] = [CaseScore(case_id=c.case_id, dice={}, volume_error_pct={}) for c in cases]
    for s in stored:
        module = load_trainable(s, device)
        for case, score in zip(cases, scores, strict=True):
            predicted = predict(module, s.spec, case.image, device)
            score.dice[s.spec.version] = dice(predicted, case.label)
            score.volume_error_pct[s.spec.version] = _volume_error(predicted, case)
    comparison = _summarise(name, versions, data.name, data.content_hash, scores)
    _save(store, comparison)
    return comparison


def has_evaluation(store: ModelStore, name: str, version: str) -> bool:
    """Whether a saved comparison includes ``version`` of ``name``."""
    folder = store.root / name / EVALUATIONS_DIR
    for path in folder.glob("*.json") if folder.is_dir() else []:
        if version in json.loads(path.read_text()).get("versions", []):
            return True
    return False


def bootstrap_ci(values: npt.NDArray[np.float64], seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean (fixed seed: the same data, the same interval)."""
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(BOOTSTRAP_RESAMPLES, values.size), replace=True).mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _volume_error(predicted: npt.NDArray[np.int64], case: TrainingCase) -> float:
    reviewed = int(np.count_nonzero(case.label))
    found = int(np.count_nonzero(predicted))
    return 100.0 * (found - reviewed) / max(reviewed, 1)


def _summarise(
    name: str, versions: tuple[str, str], export: str, export_hash: str, cases: list[CaseScore]
) -> Comparison:
    per_version = []
    for v in versions:
        d = np.array([c.dice[v] for c in cases])
        e = np.array([c.volume_error_pct[v] for c in cases])
        per_version.append(
            VersionScore(
                version=v,
                mean_dice=float(d.mean()),
                dice_ci95=bootstrap_ci(d),
                mean_volume_error_pct=float(e.mean()),
                volume_error_ci95=bootstrap_ci(e),
            )
        )
    first, second = versions
    diff = np.array([c.dice[second] - c.dice[first] for c in cases])
    return Comparison(
        model=name,
        versions=versions,
        export=export,
        export_hash=export_hash,
        cases=cases,
        scores=per_version,
        dice_difference=float(diff.mean()),
        dice_difference_ci95=bootstrap_ci(diff),
        wins={first: int((diff < 0).sum()), second: int((diff > 0).sum())},
        evaluated_at=datetime.now(UTC),
    )


def _save(store: ModelStore, comparison: Comparison) -> Path:
    folder = store.root / comparison.model / EVALUATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{comparison.versions[0]}-vs-{comparison.versions[1]}.json"
    path.write_text(comparison.model_dump_json(indent=2) + "\n")
    return path
