"""Multi-input models: several series of a study as the input channels of one network.

A network trained on several sequences (T1, T1 with contrast, T2, FLAIR; or T2, ADC, DWI) takes
them as the channels of one input tensor ``(1, C, *spatial)``, voxel for voxel on one grid. The
series of a study rarely share a grid, so a pipeline first puts every other series on the grid
of one **reference series** with ``volume.resample_to`` (trilinear, in patient coordinates; outside
the other series' field of view the value is its minimum), then feeds them, in the order the
network expects, to ``infer.segment_channels`` (``volume`` is channel 1 and the grid of the
result; ``channel_2`` … ``channel_4``). Each channel is reoriented, resampled and normalised by the
model spec exactly like a single-series input; the label map lies on the reference series' grid,
so the SEG references the reference series. The same model runs in process or on Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from radloop.core.errors import PermanentJobError
from radloop.inference.preprocess import prepare, restore
from radloop.inference.sliding_window import run_model, window_size
from radloop.pipelines.operators.inference import (
    SegmentOptions,
    _activate,
    algorithm_of,
    load_model,
    segments_of,
)
from radloop.pipelines.ports import LabelMap, Volume
from radloop.pipelines.registry import NoOptions, Operator, OperatorContext

CHANNEL_PORTS = ("volume", "channel_2", "channel_3", "channel_4")


def resample_to(volume: Volume, reference: Volume) -> Volume:
    """``volume``'s values on ``reference``'s grid (trilinear in patient coordinates).

    The result carries the reference's geometry and provenance (its grid, frames and series): it
    is a channel of the reference series, not an image of its own.
    """
    index_to_index = np.linalg.inv(volume.affine) @ reference.affine
    shape = reference.array.shape
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = index_to_index[:3, :3] @ grid + index_to_index[:3, 3:4]
    values = ndimage.map_coordinates(
        volume.array.astype(np.float32), coords, order=1, mode="constant", cval=float(volume.array.min())
    )
    return Volume(
        array=values.reshape(shape).astype(np.float32),
        affine=reference.affine,
        frame_of_reference_uid=reference.frame_of_reference_uid,
        series=reference.series,
        modality=volume.modality,
        source_frames=reference.source_frames,
        source_paths=reference.source_paths,
    )


class ResampleTo(Operator[NoOptions]):
    """Put ``volume`` on the grid of ``reference`` (a channel for a multi-input model)."""

    name: ClassVar[str] = "volume.resample_to"
    inputs: ClassVar[Mapping[str, type]] = {"volume": Volume, "reference": Volume}
    outputs: ClassVar[Mapping[str, type]] = {"volume": Volume}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"volume": Volume}`` on the reference's grid."""
        with ctx.stages.stage("resample"):
            return {"volume": resample_to(inputs["volume"], inputs["reference"])}


class InferSegmentChannels(Operator[SegmentOptions]):
    """Segment with one model whose input channels are several volumes on one grid."""

    name: ClassVar[str] = "infer.segment_channels"
    inputs: ClassVar[Mapping[str, type]] = dict.fromkeys(CHANNEL_PORTS, Volume)
    outputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"channel_3", "channel_4"})

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"labelmap": LabelMap}`` on the grid of ``volume`` (channel 1)."""
        channels: list[Volume] = [inputs[p] for p in CHANNEL_PORTS if inputs.get(p) is not None]
        reference = channels[0]
        for port, channel in zip(CHANNEL_PORTS, channels, strict=False):
            if channel.array.shape != reference.array.shape or not np.allclose(
                channel.affine, reference.affine
            ):
                raise PermanentJobError(
                    f"{self.name}: {port} is not on the grid of 'volume'; "
                    "put it there with volume.resample_to"
                )
        timer = ctx.stages
        model = load_model(ctx, self.options.model, timer)
        spec = model.require_spec()
        with timer.stage("pre"):
            prepared = [prepare(c.array, c.affine, spec) for c in channels]
            image = np.stack([p.image for p in prepared])[None].astype(np.float32)
            wanted = spec.inputs[0].shape[1] if len(spec.inputs[0].shape) > 1 else 1
            if wanted > 0 and wanted != len(channels):
                raise PermanentJobError(
                    f"model {spec.name!r} takes {wanted} channel(s); {self.name} was given {len(channels)}"
                )
        with timer.stage("infer"):
            roi = window_size(spec, model.backend)
            output = run_model(model.backend, image, roi, spec.sw_batch_size, spec.overlap)
        with timer.stage("invert"):
            scores = restore(output[0], prepared[0])
        with timer.stage("post"):
            labels = _labels(scores, spec.activation, spec.threshold, [lab.value for lab in spec.labels])
        ctx.logger.info("%s %s: %d channels; %s", self.name, spec.name, len(channels), timer.summary())
        return {"labelmap": LabelMap(labels, reference, segments_of(spec), algorithm_of(spec))}


def _labels(
    scores: npt.NDArray[np.float32], activation: str, threshold: float, known: list[int]
) -> npt.NDArray[np.uint16]:
    """Argmax over the classes (or the thresholded single score); values the spec does not name → 0."""
    if scores.shape[0] > 1:
        labels = np.argmax(scores, axis=0).astype(np.uint16)
    else:
        labels = (_activate(scores[0], activation) > threshold).astype(np.uint16)
    return np.where(np.isin(labels, known), labels, 0).astype(np.uint16)
