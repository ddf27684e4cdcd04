"""Patient coordinates: DICOM's LPS and the RAS of NIfTI, nibabel, MONAI and nnU-Net.

DICOM's patient coordinate system (PS3.3 C.7.6.2.1.1) is LPS+: x grows to the patient's Left,
y to Posterior, z to Head. NIfTI's "scanner anatomical" world (and every tool that reads it) is
RAS+: x to Right, y to Anterior, z to head. The two differ by negating x and y, so a 4×4 affine
onto LPS millimetres becomes the affine onto RAS millimetres by ``diag(-1, -1, 1, 1) @ affine``;
the matrix is its own inverse, so the same product converts back.

This is the one place radloop spells that flip; voxel axis order (a volume's (frame, row,
column) against NIfTI's (column, row, frame)) is the caller's business.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

Affine = npt.NDArray[np.float64]
"""A 4×4 homogeneous matrix mapping voxel indices (and 1) to patient millimetres."""

LPS_TO_RAS: Final[Affine] = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Maps LPS millimetres to RAS millimetres (and, being its own inverse, RAS to LPS)."""


def lps_to_ras(affine: npt.ArrayLike) -> Affine:
    """The RAS affine of a voxel grid whose ``affine`` maps onto DICOM's LPS millimetres."""
    return np.asarray(LPS_TO_RAS @ np.asarray(affine), dtype=np.float64)
