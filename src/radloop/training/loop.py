"""The fine-tuning loop: MONAI loss and inferer, Adam, validation Dice each epoch, early stop.

Deterministic on the CPU: seeds fixed (torch and the numpy generator that orders cases and
places patches), ``torch.use_deterministic_algorithms(True)``, one process, no data-loader
workers; the same data, seed and base weights give bit-identical weights.

Segmentation only: Dice + cross-entropy (MONAI ``DiceCELoss``; softmax over the output channels,
or a sigmoid for a single channel). A classifier would take BCE, but a training export holds
label masks, not findings, so classifiers are refused until exports carry labels for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from radloop.core.errors import ConfigError
from radloop.inference.model_spec import ModelSpec
from radloop.training.dataset import TrainingCase

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning run."""

    epochs: int = 10
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.learning_rate}")
        if self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")


@dataclass(frozen=True)
class EpochResult:
    """One epoch: its mean training loss and the validation Dice after it."""

    epoch: int
    loss: float
    val_dice: float


@dataclass
class TrainOutcome:
    """What the loop did: the curves, the best epoch (its weights are in the module), and why it stopped."""

    base_val_dice: float
    epochs: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_val_dice: float = 0.0
    stopped: str = "epochs"
    wall_time_s: float = 0.0


EpochCallback = Callable[[EpochResult], None]


def patch_size(spec: ModelSpec) -> tuple[int, ...] | None:
    """The training patch: the spec's ``roi_size``, else the input's fixed spatial size, else None."""
    if spec.roi_size is not None:
        return tuple(spec.roi_size)
    spatial = spec.inputs[0].shape[2:]
    return tuple(spatial) if spatial and all(d > 0 for d in spatial) else None


def fine_tune(
    module: Any,
    spec: ModelSpec,
    training: tuple[TrainingCase, ...],
    validation: tuple[TrainingCase, ...],
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainOutcome:
    """Train ``module`` in place; it ends holding the weights of the best validation epoch.

    Without validation cases, the last epoch counts as best. ``KeyboardInterrupt`` between or
    during epochs stops the loop with the best weights so far (``stopped == "interrupted"``).
    """
    import torch

    if spec.task != "segmentation":
        raise ConfigError(
            f"model {spec.name}: fine-tuning a classifier is not supported (exports hold masks)"
        )
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    try:
        outcome, best = _epochs(module, spec, training, validation, config, on_epoch)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)  # a process-wide switch: put it back
    module.load_state_dict(best)
    return outcome


def _epochs(
    module: Any,
    spec: ModelSpec,
    training: tuple[TrainingCase, ...],
    validation: tuple[TrainingCase, ...],
    config: TrainConfig,
    on_epoch: EpochCallback | None,
) -> tuple[TrainOutcome, dict[str, Any]]:
    """The epochs of :func:`fine_tune`: the outcome and the best epoch's weights."""
    import torch
    from monai.losses.dice import DiceCELoss

    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    start = time.perf_counter()
    outcome = TrainOutcome(base_val_dice=mean_dice(module, spec, validation, config.device))
    outcome.best_val_dice = outcome.base_val_dice
    best = _state(module)
    loss_fn: Any = None
    since_best = 0
    try:
        for epoch in range(1, config.epochs + 1):
            module.train()
            losses = []
            for index in rng.permutation(len(training)):
                image, label = _patch(training[int(index)], patch_size(spec), rng)
                x = torch.from_numpy(image[None, None]).to(config.device)
                logits = _channels(module(_repeat(x, spec)))
                if loss_fn is None:
                    loss_fn = _loss(logits.shape[1], DiceCELoss)
                y = torch.from_numpy(label[None, None]).to(config.device)
                loss = loss_fn(logits, (y > 0).float() if logits.shape[1] == 1 else y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            val = mean_dice(module, spec, validation, config.device) if validation else float("nan")
            result = EpochResult(epoch, float(np.mean(losses)), val)
            outcome.epochs.append(result)
            if on_epoch is not None:
                on_epoch(result)
            if not validation or val > outcome.best_val_dice:
                outcome.best_epoch, outcome.best_val_dice, best, since_best = epoch, val, _state(module), 0
            else:
                since_best += 1
                if since_best >= config.patience:
                    outcome.stopped = "early stop"
                    break
    except KeyboardInterrupt:
        outcome.stopped = "interrupted"
    outcome.wall_time_s = round(time.perf_counter() - start, 3)
    return outcome, best


def predict(module: Any, spec: ModelSpec, image: npt.NDArray[np.float32], device: str) -> IntArray:
    """Labels of one prepared image: MONAI's sliding window over the patch size, argmax/threshold."""
    import torch
    from monai.inferers.utils import sliding_window_inference

    module.eval()
    x = _repeat(torch.from_numpy(image[None, None]).to(device), spec)
    with torch.no_grad():
        roi = patch_size(spec)
        if roi is None:
            logits = _channels(module(x))
        else:
            logits = _channels(
                sliding_window_inference(
                    x, roi, spec.sw_batch_size, lambda t: _channels(module(t)), spec.overlap
                )
            )
    scores = logits[0].cpu().numpy()
    if scores.shape[0] > 1:
        return np.asarray(np.argmax(scores, axis=0), dtype=np.int64)
    probabilities = 1.0 / (1.0 + np.exp(-scores[0])) if spec.activation == "sigmoid" else scores[0]
    return np.asarray(probabilities > spec.threshold, dtype=np.int64)


def dice(predicted: IntArray, truth: IntArray) -> float:
    """Dice of foreground (any label) between two label arrays; 1.0 when both are empty."""
    a, b = predicted > 0, truth > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def mean_dice(module: Any, spec: ModelSpec, cases: tuple[TrainingCase, ...], device: str) -> float:
    """Mean foreground Dice of ``module`` over ``cases`` (NaN without cases)."""
    if not cases:
        return float("nan")
    return float(np.mean([dice(predict(module, spec, c.image, device), c.label) for c in cases]))


def _state(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _loss(channels: int, dice_ce: Any) -> Any:
    if channels == 1:
        return dice_ce(sigmoid=True)
    return dice_ce(to_onehot_y=True, softmax=True)


def _channels(output: Any) -> Any:
    """The first tensor of a network's output (some return a tuple)."""
    return output[0] if isinstance(output, tuple | list) else output


def _repeat(x: Any, spec: ModelSpec) -> Any:
    """``(1, 1, …)`` repeated to the input's fixed channel count."""
    shape = spec.inputs[0].shape
    channels = shape[1] if len(shape) > 1 and shape[1] > 1 else 1
    return x.repeat(1, channels, *([1] * (x.dim() - 2))) if channels > 1 else x


def _patch(
    case: TrainingCase, size: tuple[int, ...] | None, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], IntArray]:
    """A random patch of ``size`` (padded where the image is smaller), or the whole case."""
    if size is None:
        return case.image, case.label
    image, label = case.image, case.label
    pad = [(0, max(0, s - n)) for s, n in zip(size, image.shape, strict=True)]
    if any(p[1] for p in pad):
        image = np.pad(image, pad, mode="constant", constant_values=float(image.min()))
        label = np.pad(label, pad, mode="constant")
    starts = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, image.shape, strict=True)]
    window = tuple(slice(b, b + s) for b, s in zip(starts, size, strict=True))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])
