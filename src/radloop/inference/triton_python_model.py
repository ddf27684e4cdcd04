"""Triton python-backend model that runs one ONNX or TorchScript network (copied as ``model.py``).

``radloop models build-repo --flavor python`` puts this file, the network file and
``radloop_model.json`` (format, file, tensor names) into each version folder. It is for the
CPU Triton that installs from PyPI (nvidia-pytriton), whose server has the python backend only;
the network runs inside the backend's stub process with onnxruntime or torch from the server's
own virtual environment. It imports nothing from radloop (radloop is not installed there).

Requests that arrive together (dynamic batching) and whose tensors have the same shape after
the batch axis run as one batch; others run one by one. A failing request gets an error
response; the others are answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

SPEC_FILE = "radloop_model.json"


class TritonPythonModel:
    """The model class the python backend instantiates."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the network named in ``radloop_model.json`` of this version folder."""
        folder = Path(args["model_repository"]) / args["model_version"]
        spec = json.loads((folder / SPEC_FILE).read_text())
        self.inputs: list[str] = list(spec["inputs"])
        self.outputs: list[str] = list(spec["outputs"])
        self.format: str = spec["format"]
        path = folder / spec["file"]
        if self.format == "onnx":
            import onnxruntime

            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            import torch

            self.module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request: batched when shapes allow, one by one otherwise."""
        arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        if len(requests) > 1 and _same_shapes(arrays):
            try:
                return _split(
                    self._run([np.concatenate(parts) for parts in zip(*arrays, strict=True)]),
                    [a[0].shape[0] for a in arrays],
                    self.outputs,
                )
            except Exception as e:  # one bad request must not fail the batch: answer one by one
                pb_utils.Logger.log_warn(
                    f"batch of {len(requests)} failed ({e}); running requests one by one"
                )
        return [self._respond(a) for a in arrays]

    def _respond(self, arrays: list[np.ndarray]) -> Any:
        try:
            outputs = self._run(arrays)
        except Exception as e:
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(f"{type(e).__name__}: {e}")
            )
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(n, a) for n, a in zip(self.outputs, outputs, strict=True)]
        )

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self.format == "onnx":
            results = self.session.run(self.outputs, dict(zip(self.inputs, arrays, strict=True)))
            return [np.ascontiguousarray(r) for r in results]
        import torch

        with torch.no_grad():
            result = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        tensors = list(result) if isinstance(result, tuple | list) else [result]
        return [np.ascontiguousarray(t.detach().cpu().numpy()) for t in tensors]


def _same_shapes(arrays: list[list[np.ndarray]]) -> bool:
    first = [a.shape[1:] for a in arrays[0]]
    return all([a.shape[1:] for a in request] == first for request in arrays[1:])


def _split(outputs: list[np.ndarray], sizes: list[int], names: list[str]) -> list[Any]:
    responses, start = [], 0
    for size in sizes:
        tensors = [
            pb_utils.Tensor(n, np.ascontiguousarray(o[start : start + size]))
            for n, o in zip(names, outputs, strict=True)
        ]
        responses.append(pb_utils.InferenceResponse(tensors))
        start += size
    return responses
