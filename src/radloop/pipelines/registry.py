"""Operators: small, typed, explicitly registered units of a pipeline.

An operator class declares

* ``name``: the string a pipeline file names in ``use:``,
* ``inputs`` / ``outputs``: port name → port type (from :mod:`radloop.pipelines.ports`),
* ``Options``: a pydantic model validating the ``with:`` block of the pipeline file,

and implements ``run(ctx, inputs) -> outputs``. Nothing is discovered by import side effects:
:func:`radloop.pipelines.operators.builtin_registry` lists every built-in operator by hand.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from radloop.core.errors import ConfigError
from radloop.core.uids import derived_uid

if TYPE_CHECKING:
    from radloop.inference.resolve import ModelResolver


class NoOptions(BaseModel):
    """Options model for operators that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class OperatorContext:
    """What an operator may use besides its inputs: where to write, how to log, how to name things."""

    job_id: int
    idempotency_key: str
    workdir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("radloop.operator"))
    models_dir: Path | None = None
    pipeline_name: str = ""
    pipeline_version: str = ""
    models: ModelResolver | None = None
    """Model name → backend (settings + model store); set by the job runner."""

    def uid(self, *parts: str) -> str:
        """A UID that is the same on every attempt of this job (so retries overwrite, not duplicate)."""
        return derived_uid(self.idempotency_key, *parts)


class Operator(ABC):
    """Base class of every operator; see the module docstring for the contract."""

    name: ClassVar[str]
    inputs: ClassVar[Mapping[str, type]]
    outputs: ClassVar[Mapping[str, type]]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    @abstractmethod
    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Compute the outputs (a dict keyed by the names in ``outputs``) from ``inputs``."""


class OperatorRegistry:
    """Operator classes by name. Registration is explicit; a duplicate name is an error."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Operator]] = {}

    def register(self, cls: type[Operator]) -> type[Operator]:
        """Add ``cls`` under ``cls.name``; returns it so the method can serve as a decorator."""
        if cls.name in self._by_name:
            raise ConfigError(f"operator name {cls.name!r} registered twice")
        self._by_name[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Operator]:
        """The operator class registered as ``name``; :class:`KeyError` if there is none."""
        return self._by_name[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name
