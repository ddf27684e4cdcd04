"""Agreement between the AI mask and the final (reviewed) mask: Dice, volumes, changed voxels.

Masks are compared as "any segment" (label > 0) on the same grid; for a multi-segment result,
relabelling a voxel from one segment to another counts in neither ``added`` nor ``removed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Agreement:
    """How much the final mask differs from the AI mask."""

    dice: float
    volume_ai_ml: float
    volume_final_ml: float
    added_voxels: int
    removed_voxels: int

    @property
    def volume_change_ml(self) -> float:
        """Final minus AI volume, in mL."""
        return self.volume_final_ml - self.volume_ai_ml

    @property
    def volume_change_pct(self) -> float | None:
        """Volume change relative to the AI volume, in percent (None when the AI mask is empty)."""
        if self.volume_ai_ml == 0:
            return None
        return 100.0 * self.volume_change_ml / self.volume_ai_ml


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|); 1.0 when both masks are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def agreement(
    ai_labels: npt.NDArray[np.integer], final_labels: npt.NDArray[np.integer], voxel_volume_ml: float
) -> Agreement:
    """Compare two label arrays on one grid; ``voxel_volume_ml`` converts voxel counts to mL."""
    if ai_labels.shape != final_labels.shape:
        raise ValueError(f"masks differ in shape: {ai_labels.shape} vs {final_labels.shape}")
    ai, final = ai_labels > 0, final_labels > 0
    return Agreement(
        dice=dice(ai, final),
        volume_ai_ml=int(np.count_nonzero(ai)) * voxel_volume_ml,
        volume_final_ml=int(np.count_nonzero(final)) * voxel_volume_ml,
        added_voxels=int(np.count_nonzero(final & ~ai)),
        removed_voxels=int(np.count_nonzero(ai & ~final)),
    )


def unchanged(volume_ml: float) -> Agreement:
    """The agreement of a mask accepted as it is: Dice 1, no voxel added or removed."""
    return Agreement(
        dice=1.0, volume_ai_ml=volume_ml, volume_final_ml=volume_ml, added_voxels=0, removed_voxels=0
    )
