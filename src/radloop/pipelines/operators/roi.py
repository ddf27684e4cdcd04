"""Region-of-interest operators: crop a volume before inference, paste the labels back after.

``roi.crop`` keeps the bounding box of the voxels above an intensity threshold (for CT, the
body: HU > -500 drops the air around it), plus a margin, so that models and sliding windows
see less of the empty field of view. The cropped :class:`Volume` is a plain index slice of the
original: same axes and spacing, origin moved, its source frames the slices it kept.
``labelmap.paste`` puts a label map computed on such a crop back onto the full volume's grid
(the crop's position is recovered from the two affines), so writers see the original series.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from radloop.core.errors import InputDataError, PermanentJobError
from radloop.pipelines.ports import LabelMap, Volume
from radloop.pipelines.registry import NoOptions, Operator, OperatorContext

Box = tuple[slice, slice, slice]


class RoiCropOptions(BaseModel):
    """``with:`` options of ``roi.crop``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(-500.0, description="Voxels above this value form the region (CT: HU).")
    margin_mm: float = Field(10.0, ge=0.0, description="Added on every side of the region's bounding box.")


class RoiCrop(Operator[RoiCropOptions]):
    """Crop a volume to the bounding box of its voxels above ``threshold`` (plus ``margin_mm``)."""

    name: ClassVar[str] = "roi.crop"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"volume": Volume}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"volume": Volume}``: the cropped volume (the whole one if the region fills it)."""
        options = self.options
        volume: Volume = inputs["volume"]
        box = region_box(volume, options.threshold, options.margin_mm)
        cropped = crop(volume, box)
        ctx.logger.info(
            "%s: %s → %s (threshold %g, margin %g mm)",
            self.name,
            volume.array.shape,
            cropped.array.shape,
            options.threshold,
            options.margin_mm,
        )
        return {"volume": cropped}


class LabelMapPaste(Operator[NoOptions]):
    """Put a label map computed on a crop of ``volume`` back onto ``volume``'s own grid."""

    name: ClassVar[str] = "labelmap.paste"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap, "volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"labelmap": LabelMap}`` on the full volume; outside the crop is background."""
        labelmap: LabelMap = inputs["labelmap"]
        volume: Volume = inputs["volume"]
        box = crop_box(labelmap.reference, volume)
        full = np.zeros(volume.array.shape, dtype=labelmap.array.dtype)
        full[box] = labelmap.array
        return {"labelmap": replace(labelmap, array=full, reference=volume)}


def region_box(volume: Volume, threshold: float, margin_mm: float) -> Box:
    """Bounding box of ``volume.array > threshold``, grown by ``margin_mm`` and clipped to the volume."""
    inside = np.asarray(volume.array) > threshold
    if not inside.any():
        raise InputDataError(
            f"no voxel above {threshold:g}: nothing to crop to (is this the right modality?)"
        )
    bounds = []
    for axis, spacing in enumerate(volume.spacing):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(inside.any(axis=other))
        margin = int(np.ceil(margin_mm / spacing)) if spacing > 0 else 0
        bounds.append(
            slice(max(0, int(hits[0]) - margin), min(inside.shape[axis], int(hits[-1]) + 1 + margin))
        )
    return (bounds[0], bounds[1], bounds[2])


def crop(volume: Volume, box: Box) -> Volume:
    """The sub-volume ``box``: its array, its frames, and the affine with the origin moved."""
    start = np.array([s.start for s in box] + [1], dtype=np.float64)
    affine = volume.affine.copy()
    affine[:, 3] = volume.affine @ start
    return replace(
        volume,
        array=np.ascontiguousarray(volume.array[box]),
        affine=affine,
        source_frames=volume.source_frames[box[0]],
    )


def crop_box(cropped: Volume, full: Volume) -> Box:
    """Where ``cropped`` lies in ``full``: an index box; :class:`PermanentJobError` if it is no crop of it."""
    if not np.allclose(cropped.affine[:3, :3], full.affine[:3, :3], atol=1e-4):
        raise PermanentJobError(
            "labelmap.paste: the label map's volume has other axes or spacing than the volume"
        )
    index = np.asarray(np.linalg.solve(full.affine, cropped.affine[:, 3])[:3], dtype=np.float64)
    start = np.round(index).astype(int)
    stop = start + np.array(cropped.array.shape)
    if (
        not np.allclose(index, start, atol=1e-3)
        or (start < 0).any()
        or (stop > np.array(full.array.shape)).any()
    ):
        raise PermanentJobError(
            f"labelmap.paste: the label map's volume is not a crop of the volume (at {index})"
        )
    return (
        slice(int(start[0]), int(stop[0])),
        slice(int(start[1]), int(stop[1])),
        slice(int(start[2]), int(stop[2])),
    )
