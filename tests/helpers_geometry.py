"""Geometry checks shared by the writer tests: RTSTRUCT contours filled back onto a volume grid,
Dice overlap. A plain module like `peers` (pytest puts `tests/` on `sys.path`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from radloop.pipelines.ports import Volume


def rasterise_rtstruct(rt: Dataset, volume: Volume, roi_number: int) -> npt.NDArray[np.bool_]:
    """Fill the ROI's contours on the volume grid (pixel centres, even-odd rule)."""
    to_index = np.linalg.inv(volume.affine)
    slice_of = {(f.sop_instance_uid, f.frame_number): i for i, f in enumerate(volume.source_frames)}
    out = np.zeros(volume.array.shape, dtype=bool)
    (roi,) = [r for r in rt.ROIContourSequence if r.ReferencedROINumber == roi_number]
    for contour in roi.get("ContourSequence", []):
        image = contour.ContourImageSequence[0]
        frame = int(image.ReferencedFrameNumber) if "ReferencedFrameNumber" in image else None
        k = slice_of[str(image.ReferencedSOPInstanceUID), frame]
        points = np.array(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        index = (to_index @ np.c_[points, np.ones(len(points))].T).T
        out[k] ^= fill_polygon(index[:, 1:3], volume.array.shape[1:])
    return out


def fill_polygon(polygon: npt.NDArray[np.float64], shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Pixels whose centre lies inside the (row, column) polygon: a scanline crossing-number test."""
    inside = np.zeros(shape, dtype=bool)
    r0, c0 = polygon[:, 0], polygon[:, 1]
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    cols = np.arange(shape[1], dtype=np.float64)
    low, high = max(0, int(np.floor(r0.min()))), min(shape[0] - 1, int(np.ceil(r0.max())))
    for row in range(low, high + 1):
        crossing = (r0 > row) != (r1 > row)
        xs = np.sort(c0[crossing] + (row - r0[crossing]) * (c1 - c0)[crossing] / (r1 - r0)[crossing])
        inside[row] = (len(xs) - np.searchsorted(xs, cols, side="right")) % 2 == 1
    return inside


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """2|A∩B| / (|A| + |B|)."""
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
