"""Which code builds the backend a model's settings ask for: one builder per backend settings type.

The ``backend`` settings are a discriminated union (see :mod:`radloop.core.settings.inference`);
each variant's type maps to one builder in :data:`BACKENDS`, registered here explicitly, as the
destination senders are in :mod:`radloop.connector.outbound.destinations`. A builder gets the
model's name, its settings and the model store, and returns the backend with the model's spec
(``None`` when only a server knows the model).

The runtimes are imported by the builder that needs them, so a process that uses Triton never
loads torch or ONNX Runtime, and one that runs models in process never loads tritonclient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel

from radloop.core.errors import ModelNotFoundError, PermanentJobError
from radloop.core.settings import (
    AutoBackendSettings,
    ModelBackendSettings,
    OnnxRuntimeBackendSettings,
    TorchScriptBackendSettings,
    TritonBackendSettings,
)
from radloop.inference.backend import InferenceBackend
from radloop.inference.model_spec import ModelSpec
from radloop.inference.store import ModelStore, StoredModel, not_found_message

logger = logging.getLogger(__name__)

Built = tuple[InferenceBackend, ModelSpec | None]
"""A backend ready to run, and the model's spec when radloop has one."""

BackendBuilder = Callable[[str, Any, ModelStore], Built]
"""``(model name, its backend settings, the model store) -> (backend, spec)``; the settings are
of the type the builder is registered for."""


def build_triton(name: str, config: TritonBackendSettings, store: ModelStore) -> Built:
    """The model on the Triton server at ``config.url``; the local spec is used when there is one."""
    from radloop.inference.triton import TritonBackend

    backend = TritonBackend(name, config)
    logger.info("model %s: Triton at %s", name, config.url)
    stored = store.find(name)
    return backend, None if stored is None else stored.spec


def build_auto(name: str, config: AutoBackendSettings, store: ModelStore) -> Built:
    """The newest stored version, in process, with the runtime its file needs."""
    stored = _stored(name, store)
    if stored.spec.format == "onnx":
        return _onnx(stored), stored.spec
    return _torchscript(stored, config.device), stored.spec


def build_onnxruntime(name: str, config: OnnxRuntimeBackendSettings, store: ModelStore) -> Built:
    """The newest stored version with ONNX Runtime; a file of another format is refused."""
    stored = _stored(name, store)
    _check_format(stored, config.backend, "onnx")
    return _onnx(stored), stored.spec


def build_torchscript(name: str, config: TorchScriptBackendSettings, store: ModelStore) -> Built:
    """The newest stored version with TorchScript; a file of another format is refused."""
    stored = _stored(name, store)
    _check_format(stored, config.backend, "torchscript")
    return _torchscript(stored, config.device), stored.spec


BACKENDS: dict[type[BaseModel], BackendBuilder] = {
    AutoBackendSettings: build_auto,
    OnnxRuntimeBackendSettings: build_onnxruntime,
    TorchScriptBackendSettings: build_torchscript,
    TritonBackendSettings: build_triton,
}
"""The builder of each backend settings type."""


def build_backend(name: str, config: ModelBackendSettings, store: ModelStore) -> Built:
    """The backend (and spec) for model ``name`` run as ``config`` says (see :data:`BACKENDS`)."""
    return BACKENDS[type(config)](name, config, store)


def build_in_process(
    stored: StoredModel,
    config: AutoBackendSettings | OnnxRuntimeBackendSettings | TorchScriptBackendSettings,
) -> InferenceBackend:
    """One given stored version (e.g. a shadow version) in process, with the runtime its file needs."""
    if stored.spec.format == "onnx":
        return _onnx(stored)
    return _torchscript(stored, getattr(config, "device", "cpu"))


def raise_not_found(name: str, root: Path) -> NoReturn:
    """Raise :class:`ModelNotFoundError` for ``name`` with the command that adds it."""
    raise ModelNotFoundError(not_found_message(name, root, None, []))


def _stored(name: str, store: ModelStore) -> StoredModel:
    stored = store.find(name)
    if stored is None:
        raise_not_found(name, store.root)
    logger.info(
        "model %s version %s: in process (%s) from %s",
        name,
        stored.spec.version,
        stored.spec.format,
        stored.path,
    )
    return stored


def _check_format(stored: StoredModel, backend: str, runs: str) -> None:
    spec = stored.spec
    if spec.format != runs:
        wanted = {"onnx": "onnxruntime", "torchscript": "torchscript"}[spec.format]
        raise PermanentJobError(
            f"model {spec.name!r} is a {spec.format} file; backend {backend!r} cannot run it (use {wanted!r})"
        )


def _onnx(stored: StoredModel) -> InferenceBackend:
    from radloop.inference.onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(stored.path, stored.spec.name, stored.spec.version)


def _torchscript(stored: StoredModel, device: str) -> InferenceBackend:
    from radloop.inference.torchscript import TorchScriptBackend

    spec = stored.spec
    metadata = spec.metadata()
    return TorchScriptBackend(
        stored.path, spec.name, spec.version, device=device, inputs=metadata.inputs, outputs=metadata.outputs
    )
