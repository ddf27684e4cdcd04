"""Brain extraction of a T1-weighted MR volume with the deepbet models (Fisch et al., 2024).

deepbet 1.0.2 (MIT) ships two TorchScript networks in its wheel (``data/models``): a
*bounding-box* network that finds the head at 128³, and the *mask* network that segments
the brain in that box resampled to 256³. This operator reproduces deepbet's own
``BrainExtraction.run`` step by step, in numpy, and runs the two networks through the
:class:`~radloop.inference.backend.InferenceBackend` interface, so that a Triton backend can
serve them instead of the in-process TorchScript one:

1. **pre**: reorient to the closest canonical (RAS) orientation as ``nib.as_closest_canonical``
   does; resize to 128³ (PyTorch's ``nearest-exact``); intensity window from the 0.5 % and
   99.5 % quantiles of that small image; normalise (clip to the window, standardise, then
   ``0.226·x + 0.449``).
2. **infer** (bounding box): probability of brain > 0.5, largest connected component, its
   extent (rows/columns/slices with > 2 % brain) scaled to the full grid with a 10 % margin.
3. **infer** (mask): the box resized to 256³, normalised with the same window; the brain
   probability is resized back into the box.
4. **post**: probability > ``threshold``, largest connected component and filled holes inside
   the box, optional dilation (or erosion, for a negative ``n_dilate``), and back to the
   volume's own grid.

Geometry: a :class:`~radloop.pipelines.ports.Volume` affine maps (frame, row, column) to LPS;
the NIfTI (RAS) affine deepbet sees is ``diag(-1, -1, 1, 1) @ affine`` on the same array
(:mod:`radloop.core.geometry`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import cc3d
import fill_voids
import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from radloop.core.errors import InputDataError
from radloop.core.geometry import lps_to_ras
from radloop.inference.backend import InferenceBackend, TensorSpec
from radloop.inference.packaged import DEEPBET_BBOX, DEEPBET_MASK, DEEPBET_VERSION, deepbet_model_path
from radloop.inference.torchscript import TorchScriptBackend
from radloop.pipelines.ports import AlgorithmIdentification, Code, LabelMap, Segment, Volume
from radloop.pipelines.registry import Operator, OperatorContext
from radloop.pipelines.timing import StageTimer

BBOX_SHAPE = (128, 128, 128)
"""Grid of the bounding-box network (deepbet ``small_shape``)."""
MASK_SHAPE = (256, 256, 256)
"""Grid of the mask network (deepbet ``shape``)."""
BBOX_MARGIN = 0.1
QUANTILES = (0.005, 0.995)

BRAIN_SEGMENT = Segment(
    number=1,
    label="Brain",
    category=Code("91723000", "SCT", "Anatomical Structure"),
    type=Code("12738006", "SCT", "Brain"),
)
_RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]])

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Box = tuple[slice, slice, slice]


class BrainExtractionOptions(BaseModel):
    """``with:`` options of ``deepbet.brain_extraction``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="brain probability cut-off")
    n_dilate: int = Field(default=0, description="voxel layers added to the mask (negative: removed)")
    model_path: Path | None = Field(default=None, description="mask network; default: deepbet's model.pt")
    bbox_model_path: Path | None = Field(
        default=None, description="box network; default: deepbet's bbox_model.pt"
    )
    mask_model: str = Field(default=DEEPBET_MASK, description="mask network's name in the model store")
    bbox_model: str = Field(default=DEEPBET_BBOX, description="box network's name in the model store")


class BrainExtraction(Operator[BrainExtractionOptions]):
    """T1 MR volume → brain label map (segment 1, "Brain"), with deepbet's networks."""

    name: ClassVar[str] = "deepbet.brain_extraction"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}

    def __init__(
        self,
        options: BrainExtractionOptions,
        *,
        bbox_backend: InferenceBackend | None = None,
        mask_backend: InferenceBackend | None = None,
    ) -> None:
        """Backends may be given (e.g. Triton); otherwise the TorchScript files load on first run."""
        super().__init__(options)
        self._bbox_backend = bbox_backend
        self._mask_backend = mask_backend

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Segment the brain in ``inputs["volume"]``; returns ``{"labelmap": LabelMap}``."""
        options = self.options
        volume: Volume = inputs["volume"]
        timer = ctx.stages
        with timer.stage("load"):
            bbox_backend, mask_backend = self._backends(options, ctx)
        mask = extract_brain(volume, bbox_backend, mask_backend, options, timer)
        ctx.logger.info(
            "%s: %d brain voxels, %.1f mL; %s",
            self.name,
            int(mask.sum()),
            float(mask.sum()) * volume.voxel_volume_ml,
            timer.summary(),
        )
        labelmap = LabelMap(
            array=mask.astype(np.uint8),
            reference=volume,
            segments=(BRAIN_SEGMENT,),
            algorithm=AlgorithmIdentification(name="deepbet", version=DEEPBET_VERSION),
        )
        return {"labelmap": labelmap}

    def _backends(
        self, options: BrainExtractionOptions, ctx: OperatorContext
    ) -> tuple[InferenceBackend, InferenceBackend]:
        """The two networks: given backends, else model files named in the options, else the models
        resolved by name through ``ctx.models`` (settings pick in process or Triton), else the
        TorchScript files of the deepbet wheel in process."""
        if self._bbox_backend is None:
            self._bbox_backend = _backend(
                ctx, options.bbox_model_path, options.bbox_model, "bbox_model.pt", BBOX_SHAPE
            )
        if self._mask_backend is None:
            self._mask_backend = _backend(ctx, options.model_path, options.mask_model, "model.pt", MASK_SHAPE)
        return self._bbox_backend, self._mask_backend


def _backend(
    ctx: OperatorContext, path: Path | None, name: str, wheel_file: str, shape: tuple[int, int, int]
) -> InferenceBackend:
    if path is not None:
        return torchscript_backend(path, name, shape)
    if ctx.models is not None:
        return ctx.models.resolve(name).backend
    return torchscript_backend(deepbet_model_path(wheel_file), name, shape)


def torchscript_backend(path: Path, name: str, shape: tuple[int, int, int]) -> TorchScriptBackend:
    """A deepbet network as a TorchScript backend: (N, 1, *shape) image → (N, 2, *shape) softmax."""
    return TorchScriptBackend(
        path,
        name=name,
        version=DEEPBET_VERSION,
        inputs=(TensorSpec("input__0", "float32", (-1, 1, *shape)),),
        outputs=(TensorSpec("output__0", "float32", (-1, 2, *shape)),),
    )


def extract_brain(
    volume: Volume,
    bbox_backend: InferenceBackend,
    mask_backend: InferenceBackend,
    options: BrainExtractionOptions,
    timer: StageTimer,
) -> BoolArray:
    """deepbet's ``BrainExtraction.run`` on ``volume``: a boolean brain mask on the volume's grid."""
    with timer.stage("pre"):
        image, ornt = to_canonical(volume)
        small = resize_nearest_exact(image, BBOX_SHAPE)  # a new array: normalised in place
        low, high = quantiles_like_torch(small, QUANTILES)
        small = normalize(small, low, high, in_place=True)
    with timer.stage("infer"):
        small_prob = brain_probability(bbox_backend, small)
    with timer.stage("pre"):
        box = bbox_with_margin(largest_component(small_prob > 0.5), image.shape, BBOX_MARGIN)
        # windowing is per voxel, so it commutes with picking voxels: window the (≈ 4× smaller)
        # box, resize, then standardise with the statistics of the resized image, as deepbet does
        crop = standardize(resize_nearest_exact(window(image[box], low, high), MASK_SHAPE))
    with timer.stage("infer"):
        crop_prob = brain_probability(mask_backend, crop)
    with timer.stage("post"):
        mask = np.zeros(image.shape, dtype=bool)
        # thresholding commutes with picking nearest voxels: resize the (4× smaller) boolean
        mask[box] = resize_nearest_exact(crop_prob > options.threshold, mask[box].shape)
        mask[box] = fill_voids.fill(largest_component(mask[box]))
        mask = dilate(mask, options.n_dilate)
        return from_canonical(mask, ornt)


def brain_probability(backend: InferenceBackend, image: FloatArray) -> FloatArray:
    """Run one network on a normalised 3-D image; its brain channel (softmax channel 1)."""
    name = backend.metadata.inputs[0].name
    output = backend.metadata.outputs[0].name
    result = backend.infer({name: image[None, None]})[output]
    return np.asarray(result[0, 1], dtype=np.float32)


def ras_affine(volume: Volume) -> npt.NDArray[np.float64]:
    """The NIfTI (RAS) affine of ``volume.array``: the LPS affine with x and y negated."""
    return lps_to_ras(volume.affine)


def to_canonical(volume: Volume) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """The volume as deepbet sees it, via ``nib.as_closest_canonical``; also its orientation.

    ``as_closest_canonical`` is ``apply_orientation`` of the data with the affine's
    ``io_orientation``: flips and a transpose, so the canonical image is a view of the volume's
    array (read-only use; nothing is copied). deepbet's ``nan_to_num`` changes only NaN and
    infinite values: a volume with any (its sum is not finite) gets a cleaned float32 copy.
    """
    ornt = nib.io_orientation(ras_affine(volume))  # type: ignore[no-untyped-call]
    array = np.asarray(volume.array)
    if array.dtype == np.float32 and np.isfinite(np.add.reduce(array, axis=None)):
        canonical: FloatArray = nib.apply_orientation(array, ornt)  # type: ignore[no-untyped-call]
        return canonical, ornt
    reoriented = nib.apply_orientation(array, ornt)  # type: ignore[no-untyped-call]
    cleaned = np.array(reoriented, dtype=np.float32, order="C")
    return np.nan_to_num(cleaned, copy=False), ornt


def from_canonical(mask: BoolArray, ornt: npt.NDArray[np.float64]) -> BoolArray:
    """Undo :func:`to_canonical` on a mask: back onto the volume's (frame, row, column) grid."""
    back = nib.orientations.ornt_transform(_RAS_ORNT, ornt)  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(nib.apply_orientation(mask, back))  # type: ignore[no-untyped-call]


def nearest_exact_indices(in_size: int, out_size: int) -> npt.NDArray[np.intp]:
    """Source index of each output index, exactly as PyTorch's ``nearest-exact`` computes it.

    PyTorch (CPU) takes the float32 scale ``in/out``, computes ``scale·(i + 0.5) − 0.5`` in
    float32 (one rounding: compiled as a fused multiply-add on x86-64), clamps it at 0, adds
    0.5 and floors, and clamps to the last input index. Float64 holds the product exactly,
    so rounding once to float32 reproduces it bit for bit. (Without FMA a few size pairs such as
    2 → 97 would round differently; none to or from 128 or 256, the sizes deepbet uses.)
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    source = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0.0))
    index = np.floor((source.astype(np.float64) + 0.5).astype(np.float32)).astype(np.intp)
    return np.minimum(index, in_size - 1)


def resize_nearest_exact(array: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """``F.interpolate(..., shape, mode="nearest-exact")`` of a 3-D array, in numpy.

    One axis at a time, the last first: gathering whole planes and rows is cheap, so only the
    first gather picks single elements (about twice as fast as one ``np.ix_`` gather). A strided
    view (the canonical image) that shrinks is gathered in its memory's order instead (flips and
    axis order undone, so that ``np.take`` needs no contiguous copy of the large input) and only
    the small result is put back in the view's order: the same elements, 3× faster for the T1.
    """
    indices = [nearest_exact_indices(n, m) for n, m in zip(array.shape, shape, strict=True)]
    if not array.flags.c_contiguous and math.prod(shape) <= array.size:
        in_memory_order = _gather_in_memory_order(array, indices)
        if in_memory_order is not None:
            return in_memory_order
    resized = array
    for axis in (2, 1, 0):
        resized = np.take(resized, indices[axis], axis=axis)
    return np.ascontiguousarray(resized)


def _gather_in_memory_order(
    array: npt.NDArray[Any], indices: list[npt.NDArray[np.intp]]
) -> npt.NDArray[Any] | None:
    """``array[np.ix_(*indices)]`` (C order) gathered along the memory's axes, last first; None
    when ``array`` is not a flipped and transposed view of contiguous memory."""
    view, picks = array, list(indices)
    for axis in range(array.ndim):
        if view.strides[axis] < 0:
            view = np.flip(view, axis)
            picks[axis] = array.shape[axis] - 1 - picks[axis]
    order = sorted(range(array.ndim), key=lambda axis: -view.strides[axis])  # planes → elements
    resized = view.transpose(order)
    if not resized.flags.c_contiguous:
        return None
    for position in reversed(range(array.ndim)):
        resized = np.take(resized, picks[order[position]], axis=position)
    return np.ascontiguousarray(resized.transpose(np.argsort(order)))


def quantile_like_torch(array: FloatArray, q: float) -> np.float32:
    """``torch.quantile(array, q)`` (linear interpolation) with torch's float32 arithmetic."""
    return quantiles_like_torch(array, (q,))[0]


def quantiles_like_torch(array: FloatArray, qs: tuple[float, ...]) -> tuple[np.float32, ...]:
    """:func:`quantile_like_torch` for each of ``qs``, from one partial sort of ``array``."""
    flat = array.ravel()
    ranks = [np.float32(q) * np.float32(flat.size - 1) for q in qs]
    bounds = [(int(rank), int(np.ceil(rank))) for rank in ranks]
    values = np.partition(flat, sorted({i for pair in bounds for i in pair}))
    out = []
    for rank, (below, above) in zip(ranks, bounds, strict=True):
        low, high, weight = values[below], values[above], rank - np.float32(below)
        if weight < 0.5:
            out.append(np.float32(low + weight * (high - low)))
        else:
            out.append(np.float32(high - (high - low) * (np.float32(1.0) - weight)))
    return tuple(out)


def normalize(array: FloatArray, low: np.float32, high: np.float32, *, in_place: bool = False) -> FloatArray:
    """deepbet's ``normalize``: window to [low, high] → [0, 1], standardise, ``0.226·x + 0.449``.

    float32 element arithmetic, as deepbet's (and in its order), on one new array (or, with
    ``in_place``, on ``array`` itself, a float32 array the caller no longer needs); the mean and
    the unbiased standard deviation (``torch.std``) are accumulated in float64.
    """
    x: FloatArray = array if in_place else np.array(array, dtype=np.float32)
    return standardize(window(x, low, high, out=x))


def window(
    array: FloatArray, low: np.float32, high: np.float32, *, out: FloatArray | None = None
) -> FloatArray:
    """The first part of :func:`normalize`: ``clip((array - low) / (high - low), 0, 1)`` in float32,
    into a new array (or ``out``, which may be ``array``)."""
    if not high > low:
        raise InputDataError(f"the volume has no intensity range to normalise (quantiles {low}, {high})")
    x: FloatArray = np.subtract(array, low, out=out, dtype=np.float32)
    x /= high - low
    np.clip(x, np.float32(0.0), np.float32(1.0), out=x)
    return x


def standardize(x: FloatArray) -> FloatArray:
    """The rest of :func:`normalize`, in place on the windowed ``x``: subtract the mean, divide by
    the standard deviation, then ``0.226·x + 0.449``."""
    mean, std = _mean_and_std(x)
    x -= mean
    x /= std
    x *= np.float32(0.226)
    x += np.float32(0.449)
    return x


_CHUNK = 1 << 20


def _mean_and_std(x: FloatArray) -> tuple[np.float32, np.float32]:
    """Mean and unbiased (``ddof=1``) standard deviation of ``x``, summed in float64 as
    ``x.mean(dtype=float64)`` and ``x.std(dtype=float64, ddof=1)`` do, rounded to float32; the
    squared deviations a chunk at a time instead of as one float64 copy of ``x``."""
    flat = x.reshape(-1)
    mean64 = np.float64(np.add.reduce(flat, dtype=np.float64)) / np.float64(flat.size)  # float64 operands
    buffer = np.empty(min(_CHUNK, flat.size), dtype=np.float64)
    squares = np.float64(0.0)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        deviation = buffer[: chunk.size]
        np.subtract(chunk, mean64, out=deviation)
        np.multiply(deviation, deviation, out=deviation)
        squares += np.add.reduce(deviation)
    return np.float32(mean64), np.float32(np.sqrt(squares / max(flat.size - 1, 1)))


def largest_component(mask: BoolArray) -> BoolArray:
    """The largest 26-connected component of ``mask``; :class:`InputDataError` if it is empty."""
    labels = cc3d.connected_components(mask)
    counts = np.bincount(labels[labels != 0])
    if counts.size == 0:
        raise InputDataError("deepbet found no brain in the volume: is it a T1-weighted head MR?")
    largest: BoolArray = labels == int(counts.argmax())
    return largest


def bbox_with_margin(mask_small: BoolArray, shape: tuple[int, ...], margin: float) -> Box:
    """deepbet's ``get_bbox_with_margin``: the small mask's extent, scaled to ``shape``, plus margin.

    The arithmetic is float32, as in deepbet (torch tensors), so the box matches it exactly.
    """
    small_center, small_size = _bbox(mask_small)
    scale = np.array(shape, dtype=np.float32) / np.array(mask_small.shape, dtype=np.float32)
    grow = np.float32(1) + np.float32(2) * np.float32(margin)
    center = np.round(scale * small_center).astype(np.float32)
    size = np.round(grow * (scale * small_size)).astype(np.float32)
    half = size / np.float32(2)
    bounds = [(int(c - h), int(c + h)) for c, h in zip(center, half, strict=True)]
    box = tuple(slice(max(0, lo), min(n, hi), 1) for (lo, hi), n in zip(bounds, shape, strict=True))
    return (box[0], box[1], box[2])


def _bbox(mask: BoolArray, threshold: float = 0.02) -> tuple[FloatArray, FloatArray]:
    """Centre and size, per axis, of the planes in which more than ``threshold`` of voxels are set."""
    centers, sizes = [], []
    for axes in ((1, 2), (0, 2), (0, 1)):
        planes = np.flatnonzero(mask.mean(axis=axes, dtype=np.float32) > np.float32(threshold))
        if planes.size == 0:
            raise InputDataError("deepbet found too little brain to place its bounding box")
        centers.append((planes.max() + 1 + planes.min()) / 2)
        sizes.append(planes.max() + 1 - planes.min())
    return np.array(centers, dtype=np.float32), np.array(sizes, dtype=np.float32)


def dilate(mask: BoolArray, n_layers: int) -> BoolArray:
    """deepbet's ``dilate``: add (``n_layers`` > 0) or remove (< 0) that many 6-connected layers."""
    for _ in range(abs(n_layers)):
        graph = cc3d.voxel_connectivity_graph(mask.astype(np.int32) + 1, connectivity=6)
        mask[graph != 63] = n_layers > 0
    return mask
