"""From a model *name* (what a pipeline file says) to a running backend (what settings say).

:class:`ModelResolver` looks the name up in ``inference.models`` (else ``inference.default``):

* ``triton``: a :class:`~radloop.inference.triton.TritonBackend` for the server at ``url``;
  the model need not be in the local store (the server has it), but its spec is used when it is.
* ``auto`` / ``onnxruntime`` / ``torchscript``: the version staged ``production`` in the model
  store, else the newest (or a model shipped in a package, such as deepbet's), run in this
  process with the runtime its file needs. Versions staged ``shadow`` are resolved by
  :meth:`ModelResolver.shadows` (in process only), to run beside production.

The builder of each backend is registered in :mod:`radloop.inference.registry`.

Backends are built once per resolver and version and reused (a worker process keeps one
resolver, so a TorchScript model loads once, not once per job); the serving version is read
from the store on every resolve, so a promotion or rollback reaches the next job. A model that
cannot be found raises :class:`~radloop.core.errors.ModelNotFoundError` (the job fails at once,
saying how to add it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from radloop.core.errors import PermanentJobError
from radloop.core.settings import (
    InferenceSettings,
    ModelBackendSettings,
    Settings,
    TritonBackendSettings,
)
from radloop.inference.backend import InferenceBackend
from radloop.inference.model_spec import ModelSpec
from radloop.inference.registry import build_backend, build_in_process
from radloop.inference.store import ModelStore


@dataclass(frozen=True)
class ResolvedModel:
    """A backend ready to run, and the model's spec when radloop has one."""

    name: str
    backend: InferenceBackend
    spec: ModelSpec | None
    settings: ModelBackendSettings

    def require_spec(self) -> ModelSpec:
        """The spec; :class:`PermanentJobError` if the model is only known to a Triton server."""
        if self.spec is None:
            raise PermanentJobError(
                f"model {self.name!r} runs on Triton but has no spec in the local model store: add it with "
                f"`radloop models add PATH --name {self.name} --version VERSION` so radloop knows how to "
                "prepare its input"
            )
        return self.spec


class ModelSource(Protocol):
    """Where a job's operators get models by name: a :class:`ModelResolver`, or a worker's
    :class:`~radloop.pipelines.warm.ModelCache` in front of one."""

    def resolve(self, name: str) -> ResolvedModel:
        """The backend that runs ``name``."""
        ...

    def shadows(self, name: str) -> list[ResolvedModel]:
        """The versions of ``name`` staged ``shadow``."""
        ...


class ModelResolver:
    """Backends by model name, built on first use from the settings and the model store."""

    def __init__(self, settings: InferenceSettings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self._cache: dict[tuple[str, str | None], ResolvedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelResolver:
        """The resolver of a radloop process: its ``inference`` settings and model store."""
        return cls(settings.inference, ModelStore(settings.inference.store_dir(settings.data_dir)))

    def resolve(self, name: str) -> ResolvedModel:
        """The backend that runs ``name`` (cached); see the module docstring."""
        key = (name, self.store.serving_version(name))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._build(name)
            return self._cache[key]

    def shadows(self, name: str) -> list[ResolvedModel]:
        """The versions of ``name`` staged ``shadow``, each run in process (a Triton model has none)."""
        cfg = self.settings.backend_for(name)
        if isinstance(cfg, TritonBackendSettings):
            return []
        found = []
        for version in self.store.shadow_versions(name):
            key = (name, f"shadow:{version}")
            with self._lock:
                if key not in self._cache:
                    stored = self.store.get(name, version)
                    self._cache[key] = ResolvedModel(name, build_in_process(stored, cfg), stored.spec, cfg)
                found.append(self._cache[key])
        return found

    def forget(self, name: str) -> None:
        """Drop the cached backends of ``name`` (e.g. after a version was replaced)."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]

    def _build(self, name: str) -> ResolvedModel:
        cfg = self.settings.backend_for(name)
        backend, spec = build_backend(name, cfg, self.store)
        return ResolvedModel(name, backend, spec, cfg)
