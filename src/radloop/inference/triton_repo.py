"""Writing a Triton model repository from the model store (``radloop models build-repo``).

Layout (Triton's)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<n>/…            one numbered folder per stored version, oldest = 1

Two flavours:

* ``native`` for NVIDIA's Triton image (GPU or CPU): ONNX models use the ONNX Runtime backend
  (``platform: "onnxruntime_onnx"``, ``<n>/model.onnx``), TorchScript models the PyTorch backend
  (``platform: "pytorch_libtorch"``, ``<n>/model.pt``; tensors ``input__0``/``output__0``).
* ``python`` for the CPU Triton that installs from PyPI (nvidia-pytriton's ``tritonserver``,
  python backend only): every model is a python-backend wrapper (``<n>/model.py``, see
  :mod:`radloop.inference.triton_python_model`) that runs the network file beside it with
  onnxruntime or torch inside the server's environment.

Models whose first axis is a batch axis (``-1``) get ``max_batch_size`` from their spec and
dynamic batching; the server loads the newest version (``version_policy: latest 1``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from radloop.core.errors import ConfigError
from radloop.inference.model_spec import ModelSpec, TensorSpecModel
from radloop.inference.packaged import packaged_models
from radloop.inference.store import ModelStore, StoredModel

logger = logging.getLogger(__name__)

Flavor = Literal["python", "native"]
QUEUE_DELAY_US = 2000
_TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int16": "TYPE_INT16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
_NATIVE_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
"""The python-backend wrapper (not importable here: it needs the server's ``triton_python_backend_utils``)."""
PYTHON_MODEL_SPEC = "radloop_model.json"
"""The file the wrapper reads (``SPEC_FILE`` in the wrapper)."""


def build_repository(
    store: ModelStore,
    repo: Path,
    flavor: Flavor = "python",
    names: Iterable[str] | None = None,
    *,
    include_packaged: bool = True,
    force: bool = False,
) -> list[str]:
    """Write the repository for ``names`` (default: every stored model); returns the model names.

    Packaged models (deepbet) not yet imported into the store are included unless
    ``include_packaged`` is False. ``repo`` must be empty unless ``force`` (then it is replaced).
    """
    models = _select(store, names, include_packaged)
    _prepare_folder(repo, force)
    for name, versions in models.items():
        write_model(repo / name, versions, flavor)
    logger.info("Triton repository (%s) at %s: %s", flavor, repo, ", ".join(models))
    return list(models)


def write_model(folder: Path, versions: list[StoredModel], flavor: Flavor) -> None:
    """One model: ``config.pbtxt`` (from the newest spec) and a folder per version."""
    folder.mkdir(parents=True)
    newest = versions[-1].spec
    (folder / "config.pbtxt").write_text(config_pbtxt(newest, flavor))
    for number, stored in enumerate(versions, start=1):
        target = folder / str(number)
        target.mkdir()
        if flavor == "native":
            _link_or_copy(stored.path, target / _NATIVE_FILES[stored.spec.format])
            continue
        _link_or_copy(stored.path, target / stored.spec.file)
        shutil.copyfile(PYTHON_MODEL, target / "model.py")
        (target / PYTHON_MODEL_SPEC).write_text(
            json.dumps(
                {
                    "name": stored.spec.name,
                    "version": stored.spec.version,
                    "format": stored.spec.format,
                    "file": stored.spec.file,
                    "inputs": [t.name for t in stored.spec.inputs],
                    "outputs": [t.name for t in stored.spec.outputs],
                },
                indent=2,
            )
            + "\n"
        )


def config_pbtxt(spec: ModelSpec, flavor: Flavor) -> str:
    """The ``config.pbtxt`` text for ``spec`` (protobuf text format)."""
    batching = spec.max_batch_size > 0 and all(t.shape[0] == -1 for t in (*spec.inputs, *spec.outputs))
    lines = [f'name: "{spec.name}"']
    if flavor == "python":
        lines.append('backend: "python"')
    else:
        lines.append(
            'platform: "onnxruntime_onnx"' if spec.format == "onnx" else 'platform: "pytorch_libtorch"'
        )
    lines.append(f"max_batch_size: {spec.max_batch_size if batching else 0}")
    lines.append("input [\n" + ",\n".join(_tensor(t, batching) for t in spec.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t, batching) for t in spec.outputs) + "\n]")
    if batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    if flavor == "python":
        lines.append("instance_group [ { kind: KIND_CPU, count: 1 } ]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    lines.append(f'parameters: {{ key: "radloop_version", value: {{ string_value: "{spec.version}" }} }}')
    return "\n".join(lines) + "\n"


def _tensor(tensor: TensorSpecModel, batching: bool) -> str:
    dims = tensor.shape[1:] if batching else tensor.shape
    if not dims:
        raise ConfigError(f"tensor {tensor.name!r}: its shape {tensor.shape} is unknown; give it in the spec")
    dtype = _TRITON_TYPES.get(np.dtype(tensor.dtype).name)
    if dtype is None:
        raise ConfigError(f"tensor {tensor.name!r}: dtype {tensor.dtype} has no Triton type here")
    return f'  {{ name: "{tensor.name}", data_type: {dtype}, dims: [ {", ".join(str(d) for d in dims)} ] }}'


def _select(
    store: ModelStore, names: Iterable[str] | None, include_packaged: bool
) -> dict[str, list[StoredModel]]:
    wanted = list(names) if names is not None else None
    models = {n: [store.get(n, v) for v in store.versions(n)] for n in store.names()}
    if include_packaged:
        for name, packaged in packaged_models().items():
            models.setdefault(name, [StoredModel(packaged.spec, packaged.path)])
    if wanted is None:
        return models
    missing = [n for n in wanted if n not in models]
    if missing:
        raise ConfigError(f"not in the model store at {store.root}: {missing}")
    return {n: models[n] for n in wanted}


def _prepare_folder(repo: Path, force: bool) -> None:
    if repo.exists() and any(repo.iterdir()):
        if not force:
            raise ConfigError(f"{repo} is not empty (use --force to replace it)")
        shutil.rmtree(repo)
    repo.mkdir(parents=True, exist_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (models can be large), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
