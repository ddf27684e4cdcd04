"""Getting a volume into the space a network was trained in, and its output back.

:func:`prepare` reorients the volume (axis flips and swaps, no interpolation: nibabel's
orientation arithmetic, as MONAI's ``Orientationd``), resamples it to the spec's spacing
(linear, ``scipy.ndimage.zoom``), and normalises intensities. :func:`restore` undoes the
geometry on the network's output (channels first), so the caller gets scores on the volume's
own (frame, row, column) grid and takes argmax or a threshold there.

Geometry: a volume's affine maps (frame, row, column) to LPS (DICOM). nibabel and MONAI speak
RAS, so the RAS affine (:func:`radloop.core.geometry.lps_to_ras`) is used for orientation codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from radloop.core.errors import InputDataError
from radloop.core.geometry import lps_to_ras
from radloop.inference.model_spec import IntensitySpec, ModelSpec

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Prepared:
    """The network's view of a volume, and what :func:`restore` needs to come back."""

    image: FloatArray
    """Spatial array as the network expects it (no channel or batch axis)."""
    oriented_shape: tuple[int, ...]
    """Shape after reorientation, before resampling."""
    back: npt.NDArray[np.float64] | None
    """nibabel orientation transform from the network's axes to the volume's (None = unchanged)."""


def prepare(array: npt.NDArray[Any], affine: npt.NDArray[np.float64], spec: ModelSpec) -> Prepared:
    """Reorient, resample and normalise ``array`` (frame, row, column) as ``spec`` says."""
    image = np.asarray(array, dtype=np.float32)
    spacing = voxel_sizes(affine)
    back = None
    if spec.orientation is not None:
        ras = lps_to_ras(affine)
        have = nib.io_orientation(ras)  # type: ignore[no-untyped-call]
        want = nib.orientations.axcodes2ornt(tuple(spec.orientation))  # type: ignore[no-untyped-call]
        forward = nib.orientations.ornt_transform(have, want)  # type: ignore[no-untyped-call]
        back = nib.orientations.ornt_transform(want, have)  # type: ignore[no-untyped-call]
        image = np.ascontiguousarray(nib.apply_orientation(image, forward))  # type: ignore[no-untyped-call]
        spacing = tuple(spacing[int(i)] for i in np.argsort(forward[:, 0]))
    oriented_shape = image.shape
    if spec.spacing is not None:
        shape = tuple(
            max(1, round(n * s / t)) for n, s, t in zip(image.shape, spacing, spec.spacing, strict=True)
        )
        image = resize_linear(image, shape)
    return Prepared(normalize(image, spec.intensity), oriented_shape, back)


def restore(output: npt.NDArray[Any], prepared: Prepared) -> FloatArray:
    """The network's output ``(channels, *spatial)`` back on the volume's grid, per channel."""
    channels = []
    for channel in np.asarray(output, dtype=np.float32):
        if channel.shape != prepared.oriented_shape:
            channel = resize_linear(channel, prepared.oriented_shape)
        if prepared.back is not None:
            channel = nib.apply_orientation(channel, prepared.back)  # type: ignore[no-untyped-call]
        channels.append(np.ascontiguousarray(channel))
    return np.stack(channels)


def voxel_sizes(affine: npt.NDArray[np.float64]) -> tuple[float, ...]:
    """Spacing in mm along each array axis of an affine."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def resize_linear(image: npt.NDArray[Any], shape: tuple[int, ...]) -> FloatArray:
    """Linear resampling to ``shape``, voxel edges aligned (``grid_mode``), edges extended."""
    if tuple(image.shape) == tuple(shape):
        return np.asarray(image, dtype=np.float32)
    zoom = [m / n for m, n in zip(shape, image.shape, strict=True)]
    resized = ndimage.zoom(np.asarray(image, dtype=np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    return np.asarray(resized, dtype=np.float32)


def normalize(image: FloatArray, intensity: IntensitySpec) -> FloatArray:
    """Apply the spec's intensity normalisation (see :class:`IntensitySpec`)."""
    if intensity.kind == "scale_range":
        a_min, a_max = float(intensity.a_min or 0.0), float(intensity.a_max or 1.0)
        scaled = (image - a_min) / (a_max - a_min) * (intensity.b_max - intensity.b_min) + intensity.b_min
        if intensity.clip:
            scaled = np.clip(
                scaled, min(intensity.b_min, intensity.b_max), max(intensity.b_min, intensity.b_max)
            )
        return scaled.astype(np.float32)
    if intensity.kind == "zscore":
        return _zscore(image, intensity.nonzero)
    return image


def _zscore(image: FloatArray, nonzero: bool) -> FloatArray:
    selected = image[image != 0] if nonzero else image
    if selected.size == 0:
        raise InputDataError("the volume has no non-zero voxel to normalise")
    mean, std = float(selected.mean()), float(selected.std())
    out = (image - mean) / (std if std > 0 else 1.0)
    if nonzero:
        out = np.where(image != 0, out, 0.0)
    return out.astype(np.float32)
