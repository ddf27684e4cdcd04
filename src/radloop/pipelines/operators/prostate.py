"""Whole-gland prostate segmentation of a T2-weighted MR volume with the TAPS network.

lavlab-taps 1.1.2 (MIT, PyPI) ships one ONNX network in its wheel
(``taps/resources/model_v1.onnx``: a MONAI SegResNetDS, input ``(N, 1, 128, 128, 32)`` float32,
output one channel of logits of the same size). This operator reproduces the package's own
``taps.inference.segment`` (its ``build_preprocessing``, ``sliding_window_inference`` call,
``gaussian_blur_logits``, ``Invertd`` and ``_largest_component``) step by step in numpy on
radloop's :class:`~radloop.pipelines.ports.Volume`, and runs the network through the
:class:`~radloop.inference.backend.InferenceBackend` interface, so the model store, ONNX Runtime
in process or a Triton server serve it alike:

1. **pre**: reorient to RAS (MONAI ``Orientationd``: axis flips and swaps, no interpolation);
   resample to 0.8 × 0.8 × 3.0 mm (MONAI ``Spacingd``: keep the direction, shape and origin from
   the grid's corner voxels, trilinear interpolation in float64 with the edge values extended);
   z-score of the non-zero voxels (``NormalizeIntensityd(nonzero=True)``); crop to the box of the
   voxels above zero after normalisation with a 5-voxel margin (``CropForegroundd``; since MONAI
   1.5 the box may reach past the image, which is then padded with zeros).
2. **infer**: sliding window of 128 × 128 × 32 with overlap 0.5 and Gaussian blending (MONAI's
   ``sliding_window_inference``, shared with ``infer.segment``); radloop sends
   ``sw_batch_size`` windows per call where the package sends one (same numbers, fewer calls).
3. **post**: Gaussian smoothing of the logits (σ 2.5 voxels, edges extended); the crop undone
   (zero logits outside the box), the resampling undone (linear, back onto the RAS grid), the
   orientation undone; sigmoid; foreground where the probability exceeds 0.55; the largest
   26-connected component.

The package's quality checks become the job's outcome: a gland volume outside 15–80 mL or an
extent outside 10–150 mm along any axis fails the job with the reason
("result implausible: 3.2 mL (expected 15–80 mL)"), or — with ``on_implausible: flag`` — the job
succeeds, the SEG is written and the SR carries the flag (an empty mask always fails: there is
nothing to write). The package checks the thresholded mask before it keeps the largest
component; radloop checks the mask it reports.

Where the crop leaves part of the image out, the package gives that part logit 0, i.e.
probability 0.5 (below its 0.55 threshold); radloop does the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import cc3d
import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from radloop.core.errors import InputDataError
from radloop.core.geometry import lps_to_ras
from radloop.inference.backend import InferenceBackend
from radloop.inference.packaged import TAPS_MODEL, TAPS_VERSION, taps_backend, taps_model_path
from radloop.inference.sliding_window import sliding_window
from radloop.pipelines.ports import AlgorithmIdentification, Code, LabelMap, Segment, Volume
from radloop.pipelines.registry import Operator, OperatorContext
from radloop.pipelines.timing import StageTimer
from radloop.pipelines.writers.ihe_codes import RESULT_IMPLAUSIBLE

SPACING = (0.8, 0.8, 3.0)
"""Voxel size (mm) of the grid the network was trained on (taps ``VOXEL_SPACING``)."""
ROI_SIZE = (128, 128, 32)
"""Sliding-window patch (taps ``ROI_SIZE``)."""
CROP_MARGIN = 5
"""Voxels added around the foreground box (taps ``CropForegroundd(margin=5)``)."""
VOLUME_RANGE_ML = (15.0, 80.0)
EXTENT_RANGE_MM = (10.0, 150.0)
_AFFINE_TOL = 1e-3
"""MONAI's ``AFFINE_TOL``: spacings and affines this close count as equal."""

PROSTATE_SEGMENT = Segment(
    number=1,
    label="Prostate",
    category=Code("91723000", "SCT", "Anatomical Structure"),
    type=Code("41216001", "SCT", "Prostate"),
)

FloatArray = npt.NDArray[np.float32]
DoubleArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))  # type: ignore[no-untyped-call]


class ProstateOptions(BaseModel):
    """``with:`` options of ``taps.prostate_segmentation``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=TAPS_MODEL, description="the network's name in the model store")
    model_path: Path | None = Field(default=None, description="an ONNX file instead of the stored model")
    threshold: float = Field(default=0.55, gt=0.0, lt=1.0, description="probability cut-off")
    sigma: float = Field(default=2.5, ge=0.0, description="Gaussian smoothing of the logits, voxels")
    overlap: float = Field(default=0.5, ge=0.0, lt=1.0, description="sliding-window overlap")
    sw_batch_size: int = Field(default=4, ge=1, le=64, description="windows per network call")
    on_implausible: Literal["fail", "flag"] = Field(
        default="fail", description="fail the job, or write the SEG and flag the result in the SR"
    )
    volume_ml: tuple[float, float] = VOLUME_RANGE_ML
    extent_mm: tuple[float, float] = EXTENT_RANGE_MM


class ProstateSegmentation(Operator[ProstateOptions]):
    """T2-weighted MR volume → prostate label map (segment 1, "Prostate"), with the TAPS network."""

    name: ClassVar[str] = "taps.prostate_segmentation"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}

    def __init__(self, options: ProstateOptions, *, backend: InferenceBackend | None = None) -> None:
        """A backend may be given (e.g. Triton); otherwise the model resolves on first run."""
        super().__init__(options)
        self._backend = backend

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Segment the prostate in ``inputs["volume"]``; returns ``{"labelmap": LabelMap}``."""
        options = self.options
        volume: Volume = inputs["volume"]
        timer = ctx.stages
        with timer.stage("load"):
            backend = self._resolve(ctx)
        result = segment_prostate(volume, backend, options, timer)
        with timer.stage("post"):
            check = plausibility(result.mask, volume.affine, options)
        ctx.logger.info(
            "%s: %d voxels, %.1f mL, extent %s mm; %s",
            self.name,
            int(result.mask.sum()),
            check.volume_ml,
            " × ".join(f"{e:.1f}" for e in check.extent_mm),
            timer.summary(),
        )
        flags: tuple[Code, ...] = ()
        if check.problem is not None:
            if options.on_implausible == "fail" or not result.mask.any():  # nothing to write
                raise InputDataError(f"result implausible: {check.problem}")
            ctx.logger.warning("result implausible: %s (flagged in the SR, SEG written)", check.problem)
            flags = (RESULT_IMPLAUSIBLE,)
        labelmap = LabelMap(
            array=result.mask.astype(np.uint8),
            reference=volume,
            segments=(PROSTATE_SEGMENT,),
            algorithm=AlgorithmIdentification(name="TAPS", version=TAPS_VERSION),
            flags=flags,
        )
        return {"labelmap": labelmap}

    def _resolve(self, ctx: OperatorContext) -> InferenceBackend:
        """The given backend, else the ONNX file in the options, else the model resolved by name
        (settings pick in process or Triton), else the network in the taps wheel in process."""
        if self._backend is None:
            options = self.options
            if options.model_path is not None:
                self._backend = taps_backend(options.model_path)
            elif ctx.models is not None:
                self._backend = ctx.models.resolve(options.model).backend
            else:
                self._backend = taps_backend(taps_model_path())
        return self._backend


@dataclass(frozen=True)
class ProstateResult:
    """The probability of prostate and the final mask, both on the volume's (frame, row, column) grid."""

    probability: FloatArray
    mask: BoolArray


@dataclass(frozen=True)
class Plausibility:
    """The gland's volume and extent, and what is wrong with them (None: plausible)."""

    volume_ml: float
    extent_mm: tuple[float, float, float]
    problem: str | None


@dataclass(frozen=True)
class _Grids:
    """What undoing the preprocessing needs: orientation, the two grids and the crop box."""

    back: DoubleArray  # nibabel orientation transform from RAS back to the volume's axes
    ras_affine: DoubleArray
    ras_shape: tuple[int, int, int]
    resampled_affine: DoubleArray  # the 0.8 × 0.8 × 3 mm grid
    resampled_shape: tuple[int, int, int]
    box_start: tuple[int, int, int]  # crop box on the resampled grid (may lie outside it)
    box_end: tuple[int, int, int]


def segment_prostate(
    volume: Volume, backend: InferenceBackend, options: ProstateOptions, timer: StageTimer
) -> ProstateResult:
    """taps' ``segment`` on ``volume``: the probability map and the mask on the volume's grid."""
    with timer.stage("pre"):
        image, grids = preprocess(volume)
    with timer.stage("infer"):
        logits = sliding_window(
            backend,
            image[None, None],
            ROI_SIZE,
            sw_batch_size=options.sw_batch_size,
            overlap=options.overlap,
            mode="gaussian",
        )[0, 0]
    with timer.stage("post"):
        probability = postprocess(logits, grids, options.sigma)
        mask = largest_component(probability > np.float32(options.threshold))
    return ProstateResult(probability, mask)


def preprocess(volume: Volume) -> tuple[FloatArray, _Grids]:
    """Orientation, spacing, intensity and crop as taps' ``build_preprocessing`` (see the module doc)."""
    array = np.asarray(volume.array, dtype=np.float32)
    affine = lps_to_ras(volume.affine)
    have = nib.io_orientation(affine)  # type: ignore[no-untyped-call]
    forward = nib.orientations.ornt_transform(have, _RAS)  # type: ignore[no-untyped-call]
    back = nib.orientations.ornt_transform(_RAS, have)  # type: ignore[no-untyped-call]
    ras = np.ascontiguousarray(nib.apply_orientation(array, forward))  # type: ignore[no-untyped-call]
    ras_affine = affine @ nib.orientations.inv_ornt_aff(forward, array.shape)  # type: ignore[no-untyped-call]
    target, shape = spacing_affine(ras_affine, ras.shape, SPACING)
    resampled = resample(ras, ras_affine, target, shape)
    normalized = zscore_nonzero(resampled)
    start, end = foreground_box(normalized, CROP_MARGIN)
    cropped = crop_or_pad(normalized, start, end)
    grids = _Grids(back, ras_affine, _shape3(ras.shape), target, shape, start, end)
    return cropped, grids


def postprocess(logits: FloatArray, grids: _Grids, sigma: float) -> FloatArray:
    """Smoothed logits back on the volume's grid, as probabilities (taps' blur + ``Invertd`` + sigmoid)."""
    if sigma > 0:
        logits = ndimage.gaussian_filter(logits, sigma=sigma, mode="nearest").astype(np.float32)
    full = np.zeros(grids.resampled_shape, dtype=np.float32)
    inside = tuple(
        slice(max(s, 0), min(e, n))
        for s, e, n in zip(grids.box_start, grids.box_end, full.shape, strict=True)
    )
    from_crop = tuple(slice(i.start - s, i.stop - s) for i, s in zip(inside, grids.box_start, strict=True))
    full[inside] = logits[from_crop]
    ras_logits = resample(full, grids.resampled_affine, grids.ras_affine, grids.ras_shape)
    native = nib.apply_orientation(ras_logits, grids.back)  # type: ignore[no-untyped-call]
    probability = 1.0 / (1.0 + np.exp(-np.asarray(native, dtype=np.float64)))
    return np.ascontiguousarray(probability, dtype=np.float32)


def spacing_affine(
    affine: DoubleArray, shape: tuple[int, ...], spacing: tuple[float, float, float]
) -> tuple[DoubleArray, tuple[int, int, int]]:
    """MONAI ``Spacing`` (``diagonal=False``, ``scale_extent=False``): the affine of the grid of
    ``spacing`` mm over an image of ``shape`` on ``affine``, and that grid's shape.

    An axis already within 0.001 mm of its target keeps its own spacing. The output keeps the
    input's directions (the rotation of a Cholesky factorisation, as MONAI's ``zoom_affine``); its
    shape spans the input's corner voxel centres; its origin is the input corner that is smallest
    in output coordinates, or the grids are centred on each other when no corner is (MONAI's
    ``compute_shape_offset``). The arithmetic is MONAI's, float64 numpy, operation for operation.
    """
    linear = affine[:3, :3]
    own = np.sqrt(np.sum(linear * linear, axis=0))
    target = np.array(spacing, dtype=np.float64)
    target = np.where(np.abs(own - target) <= _AFFINE_TOL, own, target)
    factor = np.linalg.cholesky(linear.T @ linear).T
    rotation = linear @ np.linalg.inv(factor)
    out = np.eye(4)
    out[:3, :3] = rotation @ np.diag(np.sign(np.diag(factor)) * np.abs(target))
    size = np.asarray(shape, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in size], indexing="ij")).reshape((3, -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    in_out = np.linalg.solve(out, affine) @ corners
    world = affine @ corners
    distances = in_out[:-1].copy()
    out_shape = np.round(np.ptp(in_out[:-1] / in_out[-1], axis=1) + 1.0)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(distances - distances[:, i : i + 1], 1), 0.0, rtol=_AFFINE_TOL):
            offset = world[:-1, i]
            break
    if offset is None:
        offset = linear @ (size / 2.0) + affine[:-1, -1] - out[:-1, :-1] @ (out_shape / 2.0)
    out[:3, -1] = offset
    return out, _shape3(tuple(int(n) for n in out_shape))


def resample(
    image: FloatArray, source: DoubleArray, target: DoubleArray, shape: tuple[int, int, int]
) -> FloatArray:
    """``image`` on the grid ``source`` (affine) resampled onto the grid ``target`` of ``shape``:
    trilinear, in float64, the edge values extended (MONAI ``SpatialResample`` with ``bilinear``,
    ``border``, ``align_corners=False``, ``dtype=float64``).

    The index map is ``solve(source, target)``, normalised to [-1, 1] as MONAI's
    ``AffineTransform`` does, and sampled with PyTorch's ``affine_grid`` + ``grid_sample``: the
    same float64 operations in the same order, so where a sample falls exactly on a voxel
    centre it does so in both, and a background of exact zeros stays exactly zero in both (the
    z-score that follows counts non-zero voxels).
    """
    import torch
    import torch.nn.functional as F

    xform = np.linalg.solve(source, target)
    same = np.allclose(source, target, atol=_AFFINE_TOL)
    unchanged = same or np.allclose(xform, np.eye(4), atol=_AFFINE_TOL)
    if unchanged and tuple(image.shape) == tuple(shape):
        return np.asarray(image, dtype=np.float32)  # MONAI leaves such an image as it is
    theta = torch.as_tensor(xform, dtype=torch.float64)[None]
    theta = _normaliser(image.shape) @ theta @ torch.as_tensor(np.linalg.inv(_normaliser(shape).numpy()))
    reverse = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
    with torch.no_grad():
        grid = F.affine_grid(theta[:, :3], [1, 1, *shape], align_corners=False)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return np.ascontiguousarray(out[0, 0].numpy(), dtype=np.float32)


def _normaliser(shape: tuple[int, ...]) -> Any:
    """Voxel index → [-1, 1] grid coordinate with voxel edges at ±1 (MONAI ``normalize_transform``)."""
    import torch

    size = torch.as_tensor(shape, dtype=torch.float64)
    norm = size.clone()
    norm[norm <= 0.0] = 2.0
    norm = 2.0 / norm
    matrix = torch.diag(torch.cat((norm, torch.ones((1,), dtype=torch.float64))))
    matrix[:-1, -1] = 1.0 / size - 1.0
    return matrix


def zscore_nonzero(image: FloatArray) -> FloatArray:
    """``NormalizeIntensity(nonzero=True)``: the non-zero voxels standardised (population std), zeros kept."""
    selected = image != 0
    values = image[selected].astype(np.float64)
    if values.size == 0:
        raise InputDataError("the volume holds no non-zero voxel to normalise: is it an empty series?")
    mean, std = float(values.mean()), float(values.std())
    out = image.copy()
    out[selected] = ((values - mean) / (std if std != 0.0 else 1.0)).astype(np.float32)
    return out


def foreground_box(image: FloatArray, margin: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box of voxels above zero, ``margin`` voxels wider each way; it may reach past the image."""
    positive = image > 0
    if not positive.any():
        raise InputDataError("no voxel above the mean intensity: the volume is uniform")
    start, end = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(positive.any(axis=others))
        start.append(int(occupied[0]) - margin)
        end.append(int(occupied[-1]) + margin + 1)
    return _shape3(tuple(start)), _shape3(tuple(end))


def crop_or_pad(image: FloatArray, start: tuple[int, ...], end: tuple[int, ...]) -> FloatArray:
    """``image[start:end]`` with zeros where the box lies outside the image."""
    out = np.zeros(tuple(e - s for s, e in zip(start, end, strict=True)), dtype=np.float32)
    source = tuple(slice(max(s, 0), min(e, n)) for s, e, n in zip(start, end, image.shape, strict=True))
    target = tuple(slice(i.start - s, i.stop - s) for i, s in zip(source, start, strict=True))
    out[target] = image[source]
    return out


def largest_component(mask: BoolArray) -> BoolArray:
    """The largest 26-connected component of ``mask`` (taps' ``_largest_component``); an empty mask
    stays empty."""
    labels = cc3d.connected_components(mask, connectivity=26)
    counts = np.bincount(labels.ravel())
    if counts.size <= 1:
        return np.zeros(mask.shape, dtype=bool)
    largest: BoolArray = labels == int(np.argmax(counts[1:]) + 1)
    return largest


def plausibility(mask: BoolArray, affine: DoubleArray, options: ProstateOptions) -> Plausibility:
    """taps' volume and extent checks on ``mask`` (on a grid with the given affine)."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    volume_ml = float(mask.sum()) * voxel_ml
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    occupied = np.argwhere(mask)
    if occupied.size == 0:
        return Plausibility(0.0, (0.0, 0.0, 0.0), "no prostate found (0.0 mL)")
    extent = (occupied.max(axis=0) - occupied.min(axis=0) + 1) * spacing
    extent_mm = (float(extent[0]), float(extent[1]), float(extent[2]))
    low, high = options.volume_ml
    if not low <= volume_ml <= high:
        problem = f"{volume_ml:.1f} mL (expected {low:g}–{high:g} mL)"
        return Plausibility(volume_ml, extent_mm, problem)
    low, high = options.extent_mm
    if any(not low <= e <= high for e in extent_mm):
        shown = " × ".join(f"{e:.1f}" for e in extent_mm)
        return Plausibility(volume_ml, extent_mm, f"extent {shown} mm (expected {low:g}–{high:g} mm)")
    return Plausibility(volume_ml, extent_mm, None)


def _shape3(values: tuple[int, ...]) -> tuple[int, int, int]:
    if len(values) != 3:
        raise ValueError(f"expected three values, got {values}")
    return (int(values[0]), int(values[1]), int(values[2]))
