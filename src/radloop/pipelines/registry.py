"""Operators: small, typed, explicitly registered units of a pipeline.

An operator class declares

* ``name``: the string a pipeline file names in ``use:``,
* ``inputs`` / ``outputs``: port name → port type (from :mod:`radloop.pipelines.ports`),
* its options model, once, as the type argument of :class:`Operator`
  (``class RoiCrop(Operator[RoiCropOptions])``): a pydantic model validating the ``with:`` block
  of the pipeline file, found again as ``cls.Options``; ``self.options`` has that type,

and implements ``run(ctx, inputs) -> outputs``. Nothing is discovered by import side effects:
:func:`radloop.pipelines.operators.builtin_registry` lists every built-in operator by hand.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from radloop.core.errors import ConfigError
from radloop.core.uids import derived_uid
from radloop.pipelines.timing import StageTimer

if TYPE_CHECKING:
    from radloop.inference.resolve import ModelSource


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
    models: ModelSource | None = None
    """Model name → backend (settings + model store; a worker's warm model cache); set by the job runner."""
    stages: StageTimer = field(default_factory=StageTimer)
    """Timings of the running step's stages; the step loop gives each step a fresh timer."""

    def uid(self, *parts: str) -> str:
        """A UID that is the same on every attempt of this job (so retries overwrite, not duplicate)."""
        return derived_uid(self.idempotency_key, *parts)


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class Operator(ABC, Generic[OptionsT]):
    """Base class of every operator; see the module docstring for the contract.

    The options model is declared once, as the type argument; ``__init_subclass__`` stores it as
    ``Options`` (for the pipeline loader), and the constructor refuses options of another type.
    A class may still set ``Options`` itself; an unparametrised operator takes :class:`NoOptions`.
    """

    name: ClassVar[str]
    inputs: ClassVar[Mapping[str, type]]
    outputs: ClassVar[Mapping[str, type]]
    Options: ClassVar[type[BaseModel]] = NoOptions
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    """Inputs that may be None (an optional study input that found no series, e.g. no prior):
    the operator runs anyway. Any other input being None skips the operator (its outputs are None)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _options_argument(cls)
        if declared is not None and "Options" not in cls.__dict__:
            cls.Options = declared

    def __init__(self, options: OptionsT) -> None:
        _check_options(type(self), options)
        self.options: OptionsT = options

    @abstractmethod
    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Compute the outputs (a dict keyed by the names in ``outputs``) from ``inputs``."""


def _options_argument(cls: type) -> type[BaseModel] | None:
    """The options model given as type argument of ``Operator[...]`` among ``cls``'s own bases."""
    for base in getattr(cls, "__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Operator):
            (argument,) = get_args(base)
            if isinstance(argument, type) and issubclass(argument, BaseModel):
                return argument
    return None


def _check_options(cls: type[Operator[Any]], options: BaseModel) -> None:
    """``options`` must be an instance of the operator's options model."""
    if not isinstance(options, cls.Options):
        raise TypeError(
            f"operator {cls.name!r}: options must be {cls.Options.__name__}, got {type(options).__name__}"
        )


class OperatorRegistry:
    """Operator classes by name. Registration is explicit; a duplicate name is an error."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Operator[Any]]] = {}

    def register(self, cls: type[Operator[Any]]) -> type[Operator[Any]]:
        """Add ``cls`` under ``cls.name``; returns it so the method can serve as a decorator."""
        if cls.name in self._by_name:
            raise ConfigError(f"operator name {cls.name!r} registered twice")
        self._by_name[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Operator[Any]]:
        """The operator class registered as ``name``; :class:`KeyError` if there is none."""
        return self._by_name[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name
