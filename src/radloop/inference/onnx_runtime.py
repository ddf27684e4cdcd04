"""In-process inference with an ONNX model file (ONNX Runtime, CPU execution provider).

Names, dtypes and shapes come from the file itself (symbolic dimensions become ``-1``).
onnxruntime is imported here only, and only when a model is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from radloop.core.errors import InferenceError
from radloop.inference.backend import ModelMetadata, TensorSpec

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxRuntimeBackend:
    """An ONNX model run in this process. Satisfies :class:`~radloop.inference.backend.InferenceBackend`.

    Loading and running failures raise :class:`InferenceError` naming the model path.
    ``threads`` = 0 takes the worker's ``workers.torch_threads`` (exported as ``OMP_NUM_THREADS`` by
    :func:`radloop.pipelines.executor.limit_threads`) or, unset, lets ONNX Runtime choose (one per core).
    """

    def __init__(self, path: Path | str, name: str, version: str, threads: int = 0) -> None:
        self.path = Path(path)
        self._session = _load(self.path, threads or _threads_from_environment())
        self._metadata = ModelMetadata(
            name=name,
            version=version,
            inputs=tuple(_spec(t) for t in self._session.get_inputs()),
            outputs=tuple(_spec(t) for t in self._session.get_outputs()),
        )

    @property
    def metadata(self) -> ModelMetadata:
        """Name, version and tensor specs read from the ONNX graph."""
        return self._metadata

    def infer(self, inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run the graph once on ``inputs`` (keyed by input name); outputs keyed by output name."""
        self._metadata.check_inputs(inputs, f"ONNX model {self.path}")
        names = [s.name for s in self._metadata.outputs]
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        try:
            arrays = self._session.run(names, feed)
        except Exception as e:
            raise InferenceError(f"ONNX model {self.path} failed to run: {e}") from e
        return {n: np.asarray(a) for n, a in zip(names, arrays, strict=True)}


def _threads_from_environment() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def _load(path: Path, threads: int) -> Any:
    """An ``InferenceSession`` on the CPU; :class:`InferenceError` on failure."""
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InferenceError(f"cannot load ONNX model {path}: {e}") from e
    logger.info("loaded ONNX model %s", path)
    return session


def _spec(node: Any) -> TensorSpec:
    """A :class:`TensorSpec` from an ONNX Runtime ``NodeArg`` (symbolic or unknown sizes → -1)."""
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or [-1]))
    return TensorSpec(node.name, _ORT_DTYPES.get(node.type, "float32"), shape)
