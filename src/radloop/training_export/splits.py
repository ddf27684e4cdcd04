"""Patient-level training/validation splits, reproducible from a seed and stable across exports.

All cases of a patient go to one side, so no patient is on both sides. Patients already placed
by an earlier export into the same folder keep their side. The others are ordered by
SHA-256 of ``"<seed>␟<patient pseudonym>"`` (no random generator whose algorithm could change
between Python versions) and the first of them go to validation until the validation side
holds ``round(val_fraction × patients)`` patients: at least one as soon as there are two
patients and ``val_fraction > 0``, and never every patient.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum


class Split(StrEnum):
    """The side of a case: the key of its list in a MONAI datalist or MSD ``dataset.json``."""

    training = "training"
    validation = "validation"


def validation_target(patients: int, val_fraction: float) -> int:
    """How many of ``patients`` should be on the validation side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if patients < 2 or val_fraction == 0.0:
        return 0
    return min(max(1, math.floor(val_fraction * patients + 0.5)), patients - 1)


def assign_splits(
    patients: Iterable[str], previous: Mapping[str, Split], val_fraction: float, seed: int
) -> dict[str, Split]:
    """The side of every patient in ``patients`` and ``previous`` (those keep their side)."""
    assigned = dict(previous)
    new = sorted(set(patients) - assigned.keys(), key=lambda p: _rank(seed, p))
    target = validation_target(len(assigned) + len(new), val_fraction)
    already = sum(1 for side in assigned.values() if side == Split.validation)
    to_validation = min(max(target - already, 0), len(new))
    for index, patient in enumerate(new):
        assigned[patient] = Split.validation if index < to_validation else Split.training
    return assigned


def _rank(seed: int, patient: str) -> str:
    """The patient's place in the seeded order."""
    return hashlib.sha256(f"{seed}\x1f{patient}".encode()).hexdigest()
