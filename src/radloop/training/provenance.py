"""The provenance of a fine-tuned version (``training.json`` in its version folder).

What it learnt from (the base version, the export's name, path and content hash, the case
pseudonyms per split), how (hyper-parameters, seed, device, software versions) and how it went
(loss and validation Dice per epoch, the base's validation Dice, wall time). ``radloop models
show`` prints it; ``radloop models compare`` reads the training cases to leave them out.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from radloop.core.errors import ConfigError
from radloop.inference.store import StoredModel

PROVENANCE_FILE = "training.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExportRef(_Strict):
    """The export a version was trained on."""

    name: str
    path: str
    content_hash: str


class EpochRecord(_Strict):
    """One epoch: mean training loss and validation Dice after it (None without validation cases)."""

    epoch: int
    loss: float
    val_dice: float | None


class TrainingRecord(_Strict):
    """The provenance of one fine-tuned version."""

    model: str
    version: str
    base_version: str
    base_sha256: str
    export: ExportRef
    cases: dict[str, list[str]]
    hyperparameters: dict[str, float | int | str | list[int] | None]
    seed: int
    device: str
    software: dict[str, str]
    curves: list[EpochRecord]
    base_val_dice: float | None
    best_epoch: int
    best_val_dice: float | None
    stopped: str
    started_at: datetime
    wall_time_s: float

    def to_json(self) -> str:
        """Indented JSON."""
        return self.model_dump_json(indent=2) + "\n"


def software_versions() -> dict[str, str]:
    """Versions of what trained: Python, radloop, torch, MONAI, numpy."""
    import monai
    import numpy
    import torch

    import radloop

    return {
        "python": platform.python_version(),
        "radloop": radloop.__version__,
        "torch": str(torch.__version__),
        "monai": str(monai.__version__),
        "numpy": numpy.__version__,
    }


def read_provenance(stored: StoredModel) -> TrainingRecord | None:
    """The training record of a version (None for a version that was imported, not trained)."""
    path = stored.folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return TrainingRecord.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as e:
        raise ConfigError(f"{path}: cannot read training provenance: {e}") from e
