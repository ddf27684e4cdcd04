"""Whole-volume or sliding-window inference through any backend.

For a volume larger than the network's input, MONAI's ``sliding_window_inference`` cuts it
into overlapping windows of ``roi_size`` (padding a volume smaller than a window), batches
``sw_batch_size`` windows per call and blends the outputs. Here its predictor sends each
batch of windows to an :class:`~radloop.inference.backend.InferenceBackend`, so the same
sliding window runs in process or on Triton (whose dynamic batcher may merge the batches of
several jobs). torch and MONAI are imported when a sliding window is run, not before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from radloop.core.errors import InferenceError
from radloop.inference.backend import InferenceBackend
from radloop.inference.model_spec import ModelSpec

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]


def window_size(spec: ModelSpec | None, backend: InferenceBackend) -> tuple[int, ...] | None:
    """The window: the spec's ``roi_size``, else the input's fixed spatial size, else None (whole)."""
    if spec is not None and spec.roi_size is not None:
        return tuple(spec.roi_size)
    spatial = backend.metadata.inputs[0].shape[2:]
    if spatial and all(d > 0 for d in spatial):
        return tuple(spatial)
    return None


def run_model(
    backend: InferenceBackend,
    image: FloatArray,
    roi_size: Sequence[int] | None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "constant",
) -> FloatArray:
    """The first output of ``backend`` for ``image`` ``(1, C, *spatial)``: one call, or sliding windows."""
    if roi_size is None:
        return _first_output(backend, image)
    return sliding_window(backend, image, roi_size, sw_batch_size, overlap, mode)


def sliding_window(
    backend: InferenceBackend,
    image: FloatArray,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "constant",
) -> FloatArray:
    """MONAI's sliding-window inference with ``backend`` as the predictor; returns ``(1, K, *spatial)``."""
    import torch
    from monai.inferers.utils import sliding_window_inference

    calls = 0

    def predictor(windows: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        batch = windows.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(np.array(_first_output(backend, batch), dtype=np.float32))  # a writable copy

    if len(roi_size) != image.ndim - 2:
        raise InferenceError(f"window {tuple(roi_size)} does not fit an image of shape {image.shape}")
    with torch.no_grad():
        result = sliding_window_inference(
            torch.from_numpy(np.ascontiguousarray(image)),
            roi_size=tuple(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode=mode,
        )
    tensor = result[0] if isinstance(result, tuple | list) else result
    logger.info(
        "sliding window %s over %s: %d calls of up to %d windows",
        tuple(roi_size),
        image.shape[2:],
        calls,
        sw_batch_size,
    )
    return np.asarray(tensor.numpy(), dtype=np.float32)  # type: ignore[union-attr]


def _first_output(backend: InferenceBackend, batch: FloatArray) -> FloatArray:
    name = backend.metadata.inputs[0].name
    output = backend.metadata.outputs[0].name
    return np.asarray(backend.infer({name: batch})[output], dtype=np.float32)
