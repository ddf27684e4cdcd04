"""Inference operators for models from the model store: segmentation and classification.

A pipeline names a model (``with: {model: ct_organs}``); which backend runs it (in process or
a Triton server) is settings (``inference.models``), resolved through ``ctx.models``. Each run
is a template of timed stages, logged per job: **load** (resolve the backend), **pre** (reorient,
resample, normalise as the model spec says), **infer** (whole volume, or MONAI's sliding window
whose window batches go to the backend), **invert** (scores back on the volume's grid) and
**post** (argmax or threshold; class probabilities).

* ``infer.segment``: Volume → LabelMap, one model.
* ``infer.segment_parallel``: Volume → LabelMap, several models run at the same time (threads:
  the backends release the GIL) and stitched into one label map, segments numbered in order.
* ``infer.classify``: Volume → Findings (one finding per label of the spec, with its probability).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from radloop.core.errors import InferenceError, PermanentJobError
from radloop.inference.model_spec import CodeSpec, ModelSpec
from radloop.inference.preprocess import normalize, prepare, resize_linear, restore
from radloop.inference.resolve import ModelSource, ResolvedModel
from radloop.inference.sliding_window import run_model, window_size
from radloop.pipelines.ports import (
    AlgorithmIdentification,
    Code,
    Finding,
    Findings,
    LabelMap,
    Segment,
    Volume,
)
from radloop.pipelines.registry import Operator, OperatorContext
from radloop.pipelines.shadow import run_shadows
from radloop.pipelines.timing import StageTimer

WindowMode = Literal["auto", "always", "never"]


class SegmentOptions(BaseModel):
    """``with:`` options of ``infer.segment``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model name in the model store.")
    sliding_window: WindowMode = Field(
        "auto", description="auto: when the spec has roi_size or the input has a fixed size; always; never."
    )
    sw_batch_size: int | None = Field(
        None, ge=1, description="Windows per backend call; default: the spec's."
    )
    overlap: float | None = Field(None, ge=0.0, lt=1.0, description="Window overlap; default: the spec's.")


class ParallelSegmentOptions(BaseModel):
    """``with:`` options of ``infer.segment_parallel``."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        min_length=2, description="Model names; run concurrently, stitched in this order."
    )
    sliding_window: WindowMode = "auto"


class ClassifyOptions(BaseModel):
    """``with:`` options of ``infer.classify``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Present above this; default: the spec's."
    )


class InferSegment(Operator[SegmentOptions]):
    """Segment a volume with one model of the store (any backend)."""

    name: ClassVar[str] = "infer.segment"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"labelmap": LabelMap}`` on the input volume's grid."""
        options = self.options
        volume: Volume = inputs["volume"]
        timer = ctx.stages
        model = load_model(ctx, options.model, timer)
        labels = segment(model, volume, options.sliding_window, timer, options.sw_batch_size, options.overlap)
        spec = model.require_spec()
        run_shadows(ctx, options.model, volume, options.sliding_window)  # stored, never delivered
        ctx.logger.info(
            "%s %s: %s voxels labelled; %s",
            self.name,
            options.model,
            int(np.count_nonzero(labels)),
            timer.summary(),
        )
        return {"labelmap": LabelMap(labels, volume, segments_of(spec), algorithm_of(spec))}


class InferSegmentParallel(Operator[ParallelSegmentOptions]):
    """Segment a volume with several models at once and stitch their labels into one label map.

    Segments are renumbered 1…n across the models in the order given. Where two models label
    the same voxel, the earlier model in ``models`` keeps it (the overlap is logged).
    """

    name: ClassVar[str] = "infer.segment_parallel"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"labelmap": LabelMap}`` holding every model's segments."""
        options = self.options
        volume: Volume = inputs["volume"]
        timers = [StageTimer() for _ in options.models]
        models = [load_model(ctx, name, t) for name, t in zip(options.models, timers, strict=True)]
        with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="infer") as pool:
            futures = [
                pool.submit(segment, m, volume, options.sliding_window, t)
                for m, t in zip(models, timers, strict=True)
            ]
            results = [f.result() for f in futures]
        labels, segments, overlap = stitch([m.require_spec() for m in models], results)
        for name, timer in zip(options.models, timers, strict=True):
            ctx.stages.include(timer, prefix=name)  # the models ran at once: their times overlap
            ctx.logger.info("%s %s: %s", self.name, name, timer.summary())
        if overlap:
            ctx.logger.warning(
                "%s: %d voxels labelled by more than one model (earlier model kept)", self.name, overlap
            )
        algorithm = AlgorithmIdentification(
            name="+".join(options.models), version="+".join(m.require_spec().version for m in models)
        )
        return {"labelmap": LabelMap(labels, volume, segments, algorithm)}


class InferClassify(Operator[ClassifyOptions]):
    """Classify a volume (or a one-frame projection image) with a model of the store."""

    name: ClassVar[str] = "infer.classify"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"findings": Findings}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"findings": Findings}``: one finding per label of the model spec."""
        options = self.options
        volume: Volume = inputs["volume"]
        timer = ctx.stages
        model = load_model(ctx, options.model, timer)
        spec = model.require_spec()
        probabilities = classify(model, volume, timer)
        threshold = options.threshold if options.threshold is not None else spec.threshold
        items = tuple(
            Finding(
                type=_code(label.type),
                probability=float(probabilities[label.value]),
                present=bool(probabilities[label.value] >= threshold),
            )
            for label in spec.labels
            if label.value < probabilities.size
        )
        ctx.logger.info(
            "%s %s: %s; %s",
            self.name,
            options.model,
            ", ".join(f"{f.type.meaning} {f.probability:.3f}" for f in items),
            timer.summary(),
        )
        return {"findings": Findings(items, volume, algorithm_of(spec))}


# --- the stages ----------------------------------------------------------------------------------


def resolver(ctx: OperatorContext) -> ModelSource:
    """The job's model resolver; a pipeline run without one cannot use store models."""
    if ctx.models is None:
        raise PermanentJobError("this operator needs the model store, but the job has no model resolver")
    return ctx.models


def load_model(ctx: OperatorContext, name: str, timer: StageTimer) -> ResolvedModel:
    """The model ``name`` resolved through the job's model store (or this worker's warm models),
    timed as stage ``load``."""
    with timer.stage("load"):
        return resolver(ctx).resolve(name)


def segment(
    model: ResolvedModel,
    volume: Volume,
    mode: WindowMode,
    timer: StageTimer,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
) -> npt.NDArray[np.uint16]:
    """Label values (the spec's) on the volume's grid; 0 = background."""
    spec = model.require_spec()
    scores = _scores_on_grid(model, spec, volume, mode, timer, sw_batch_size, overlap)
    with timer.stage("post"):
        if scores.shape[0] > 1:
            labels = np.argmax(scores, axis=0).astype(np.uint16)
        else:
            labels = (_activate(scores[0], spec.activation) > spec.threshold).astype(np.uint16)
        known = np.isin(labels, [lab.value for lab in spec.labels])
        return np.where(known, labels, 0).astype(np.uint16)


def _scores_on_grid(
    model: ResolvedModel,
    spec: ModelSpec,
    volume: Volume,
    mode: WindowMode,
    timer: StageTimer,
    sw_batch_size: int | None,
    overlap: float | None,
) -> npt.NDArray[np.float32]:
    with timer.stage("pre"):
        prepared = prepare(volume.array, volume.affine, spec)
        image = _with_channels(prepared.image, spec)
        roi = None if mode == "never" else window_size(spec, model.backend)
        if mode == "always" and roi is None:
            raise PermanentJobError(
                f"model {spec.name!r}: sliding_window 'always' needs roi_size in its spec"
            )
    with timer.stage("infer"):
        output = run_model(
            model.backend,
            image,
            roi,
            sw_batch_size or spec.sw_batch_size,
            spec.overlap if overlap is None else overlap,
        )
    with timer.stage("invert"):
        return restore(output[0], prepared)


def classify(model: ResolvedModel, volume: Volume, timer: StageTimer) -> npt.NDArray[np.float32]:
    """Class probabilities (after the spec's activation), indexed by output position."""
    spec = model.require_spec()
    with timer.stage("pre"):
        rank = len(spec.inputs[0].shape) - 2
        if rank == 2:
            if volume.array.shape[0] != 1:
                raise PermanentJobError(
                    f"model {spec.name!r} takes a 2-D image; the input has {volume.array.shape[0]} frames"
                )
            image = normalize(np.asarray(volume.array[0], dtype=np.float32), spec.intensity)
        else:
            image = prepare(volume.array, volume.affine, spec).image
        fixed = tuple(spec.inputs[0].shape[2:])
        if all(d > 0 for d in fixed):
            image = resize_linear(image, fixed)
        batch = _with_channels(image, spec)
    with timer.stage("infer"):
        scores = run_model(model.backend, batch, None)
    with timer.stage("post"):
        if scores.ndim != 2 or scores.shape[0] != 1:
            raise InferenceError(
                f"model {spec.name!r} returned scores of shape {scores.shape}, expected (1, K)"
            )
        probabilities = _activate(scores[0], spec.activation)
        if probabilities.size and (probabilities.min() < 0.0 or probabilities.max() > 1.0):
            raise PermanentJobError(
                f"model {spec.name!r} gives scores outside [0, 1] with activation "
                f"{spec.activation!r}: set activation softmax or sigmoid in its spec"
            )
        return probabilities


def stitch(
    specs: list[ModelSpec], results: list[npt.NDArray[np.uint16]]
) -> tuple[npt.NDArray[np.uint16], tuple[Segment, ...], int]:
    """One label map from several: segments renumbered in order; returns (labels, segments, overlap)."""
    combined = np.zeros(results[0].shape, dtype=np.uint16)
    segments: list[Segment] = []
    overlap = 0
    for spec, labels in zip(specs, results, strict=True):
        for label in spec.labels:
            number = len(segments) + 1
            mask = labels == label.value
            overlap += int(np.count_nonzero(mask & (combined != 0)))
            combined[mask & (combined == 0)] = number
            segments.append(
                Segment(
                    number,
                    label.name,
                    _code(label.category),
                    _code(label.type),
                    tracking_id=f"{spec.name}:{label.name}",
                )
            )
    return combined, tuple(segments), overlap


def segments_of(spec: ModelSpec) -> tuple[Segment, ...]:
    """The SEG segments of a model's labels (segment number = label value)."""
    return tuple(Segment(lab.value, lab.name, _code(lab.category), _code(lab.type)) for lab in spec.labels)


def algorithm_of(spec: ModelSpec) -> AlgorithmIdentification:
    """Algorithm identification from the model's name and version."""
    return AlgorithmIdentification(name=spec.name, version=spec.version)


def _with_channels(image: npt.NDArray[np.float32], spec: ModelSpec) -> npt.NDArray[np.float32]:
    """``(1, C, *spatial)``: the image repeated to the input's channel count (1 if not fixed)."""
    channels = spec.inputs[0].shape[1] if len(spec.inputs[0].shape) > 1 else 1
    batch = image[None, None].astype(np.float32)
    return np.repeat(batch, channels, axis=1) if channels > 1 else batch


def _activate(scores: npt.NDArray[np.float32], activation: str) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = scores.astype(np.float32)
    if activation == "sigmoid":
        result = (1.0 / (1.0 + np.exp(-result))).astype(np.float32)
    elif activation == "softmax" and scores.ndim == 1:
        shifted = np.exp(result - result.max())
        result = (shifted / shifted.sum()).astype(np.float32)
    return result


def _code(code: CodeSpec) -> Code:
    return Code(code.value, code.scheme, code.meaning)
