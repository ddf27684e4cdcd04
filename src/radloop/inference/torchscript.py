"""In-process inference with a TorchScript model file (``torch.jit.load``).

TorchScript files record neither tensor names nor shapes. Names follow Triton's convention
for PyTorch models (``input__0``, ``input__1`` … in the order of ``forward``'s arguments,
``output__0`` … in the order of its returned tensors); shapes and dtypes come from the
optional ``inputs``/``outputs`` specs. Without specs, the number of inputs is read from the
``forward`` schema, one output is assumed, and each tensor is described as ``float32`` of
unknown rank (shape ``(-1,)``). torch is imported here only, and only when a model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from radloop.core.errors import InferenceError
from radloop.inference.backend import ModelMetadata, TensorSpec

logger = logging.getLogger(__name__)


class TorchScriptBackend:
    """A TorchScript model run in this process, in eval mode and without autograd.

    Satisfies :class:`radloop.inference.backend.InferenceBackend`. Loading failures and
    failures while running raise :class:`InferenceError` naming the model path.
    """

    def __init__(
        self,
        path: Path | str,
        name: str,
        version: str,
        device: str = "cpu",
        inputs: Sequence[TensorSpec] | None = None,
        outputs: Sequence[TensorSpec] | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self._model = _load(self.path, device)
        self._metadata = ModelMetadata(
            name=name,
            version=version,
            inputs=tuple(inputs) if inputs is not None else _default_inputs(self._model),
            outputs=tuple(outputs) if outputs is not None else (TensorSpec("output__0", "float32", (-1,)),),
        )

    @property
    def metadata(self) -> ModelMetadata:
        """Name, version and tensor specs of the loaded model."""
        return self._metadata

    def infer(self, inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run ``forward`` once on ``inputs`` (keyed by input name); outputs keyed by output name."""
        import torch

        ordered = self._ordered_inputs(inputs)
        try:
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in ordered]
            with torch.no_grad():
                result = self._model(*tensors)
            arrays = _to_numpy(result)
        except Exception as e:
            raise InferenceError(f"TorchScript model {self.path} failed to run: {e}") from e
        return self._named_outputs(arrays)

    def _ordered_inputs(self, inputs: dict[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        """The input arrays in ``forward``'s argument order; names must match the metadata exactly."""
        expected = [s.name for s in self._metadata.inputs]
        if sorted(inputs) != sorted(expected):
            raise InferenceError(
                f"TorchScript model {self.path} takes inputs {expected}, got {sorted(inputs)}"
            )
        for spec in self._metadata.inputs:
            _check_input(self.path, spec, inputs[spec.name])
        return [inputs[name] for name in expected]

    def _named_outputs(self, arrays: list[npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Outputs keyed by the metadata's output names; the count must match."""
        names = [s.name for s in self._metadata.outputs]
        if len(arrays) != len(names):
            raise InferenceError(
                f"TorchScript model {self.path} returned {len(arrays)} tensors, metadata names {names}"
            )
        return dict(zip(names, arrays, strict=True))


def _load(path: Path, device: str) -> Any:
    """``torch.jit.load`` the file onto ``device`` in eval mode; :class:`InferenceError` on failure."""
    try:
        import torch

        model = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        model.eval()
    except Exception as e:
        raise InferenceError(f"cannot load TorchScript model {path}: {e}") from e
    logger.info("loaded TorchScript model %s on %s", path, device)
    return model


def _default_inputs(model: Any) -> tuple[TensorSpec, ...]:
    """One ``float32`` spec of unknown rank per tensor argument of ``forward`` (``self`` excluded)."""
    arguments = [a for a in model.forward.schema.arguments if a.name != "self"]
    return tuple(TensorSpec(f"input__{i}", "float32", (-1,)) for i in range(len(arguments)))


def _check_input(path: Path, spec: TensorSpec, array: npt.NDArray[np.generic]) -> None:
    """Refuse an input whose dtype or (known) shape differs from its spec."""
    if array.dtype != np.dtype(spec.dtype):
        raise InferenceError(
            f"TorchScript model {path}: input {spec.name} must be {spec.dtype}, got {array.dtype}"
        )
    if spec.shape == (-1,):
        return  # rank unknown: nothing more to check
    if len(spec.shape) != array.ndim or any(
        d not in (-1, a) for d, a in zip(spec.shape, array.shape, strict=True)
    ):
        raise InferenceError(
            f"TorchScript model {path}: input {spec.name} must have shape {spec.shape}, got {array.shape}"
        )


def _to_numpy(result: Any) -> list[npt.NDArray[np.generic]]:
    """A tensor, or a tuple/list of tensors, as a list of numpy arrays on the CPU."""
    tensors = list(result) if isinstance(result, tuple | list) else [result]
    return [t.detach().cpu().numpy() for t in tensors]
