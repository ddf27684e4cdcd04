"""The one small interface every inference backend implements.

A backend runs one model: it takes named input arrays and returns named output arrays
(``infer``), and says what it expects and returns (``metadata``). Operators only ever talk
to this interface, so a model run in process (TorchScript, ONNX Runtime) can be moved to a
Triton server without touching the operator. Names follow Triton's model metadata
(``name``, ``versions``, ``inputs``/``outputs`` each with ``name``, ``datatype``, ``shape``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from radloop.core.errors import InferenceError


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor: numpy dtype name (``"float32"``) and shape, -1 = dynamic."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_tensor_name(self.name)
        _check_dtype(self.name, self.dtype)
        _check_shape(self.name, self.shape)


@dataclass(frozen=True)
class ModelMetadata:
    """What a backend serves: model name, version and its input and output tensors."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelMetadata.name must not be empty")
        _check_unique_names("inputs", self.inputs)
        _check_unique_names("outputs", self.outputs)

    def input_mismatch(self, given: Iterable[str]) -> str | None:
        """None if ``given`` (input names, e.g. a dict's keys) are exactly the model's, else what is wrong."""
        expected = sorted(s.name for s in self.inputs)
        names = sorted(given)
        return None if names == expected else f"takes inputs {expected}, got {names}"

    def check_inputs(self, given: Iterable[str], where: str) -> None:
        """:class:`InferenceError` naming ``where`` unless ``given`` are exactly the model's inputs."""
        mismatch = self.input_mismatch(given)
        if mismatch:
            raise InferenceError(f"{where}: {mismatch}")


@runtime_checkable
class InferenceBackend(Protocol):
    """A model that maps named numpy arrays to named numpy arrays.

    ``infer`` raises :class:`radloop.core.errors.InferenceError` (with the cause chained) when
    the model cannot be run; it never returns partial outputs.
    """

    @property
    def metadata(self) -> ModelMetadata:
        """Name, version, inputs and outputs of the served model."""
        ...

    def infer(self, inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run the model once on ``inputs`` (keyed by input name); outputs keyed by output name."""
        ...


def _check_tensor_name(name: str) -> None:
    if not name:
        raise ValueError("TensorSpec.name must not be empty")


def _check_dtype(name: str, dtype: str) -> None:
    try:
        np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"TensorSpec {name!r}: dtype {dtype!r} is not a numpy dtype name") from e


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    if any(d < -1 or d == 0 for d in shape):
        raise ValueError(f"TensorSpec {name!r}: shape {shape} must hold positive sizes or -1 (dynamic)")


def _check_unique_names(field_name: str, specs: tuple[TensorSpec, ...]) -> None:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"ModelMetadata.{field_name} names must be unique, got {names}")
