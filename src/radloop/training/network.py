"""A stored network as a trainable torch module, and back into the format its backend runs.

* TorchScript (``model.ts``): ``torch.jit.load`` gives a scripted module whose parameters train
  like any ``nn.Module``'s; it is saved again with ``torch.jit.save``, so the fine-tuned version
  runs on the same backends (in process, Triton) as its base.
* ONNX: converting an ONNX graph back into trainable torch needs ``onnx2torch``, which radloop does
  not depend on; fine-tuning an ONNX version is refused with a message saying so (import the
  network as TorchScript to fine-tune it).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from radloop.core.errors import ConfigError
from radloop.inference.store import StoredModel


def load_trainable(stored: StoredModel, device: str) -> Any:
    """The network of ``stored`` as a torch module on ``device``, in training mode."""
    import torch

    spec = stored.spec
    if spec.format != "torchscript":
        raise ConfigError(
            f"model {spec.name}@{spec.version} is {spec.format}: fine-tuning supports TorchScript networks "
            "only (ONNX would need onnx2torch, which radloop does not ship); add the network as TorchScript"
        )
    module = torch.jit.load(str(stored.path), map_location=device)  # type: ignore[no-untyped-call]
    if not list(module.parameters()):
        raise ConfigError(f"model {spec.name}@{spec.version} has no trainable parameters")
    module.train()
    return module


def save_network(module: Any, path: Path) -> Path:
    """Save the fine-tuned module in its backend's format (TorchScript), in eval mode, on the CPU."""
    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module.cpu(), str(path))
    return path
