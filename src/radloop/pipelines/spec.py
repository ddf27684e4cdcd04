"""Pipeline files: YAML → a validated DAG of typed operators, checked before anything runs.

A pipeline file names its operators (``id``, ``use``, ``with`` options, ``inputs`` wired as
``<operator id>.<output port>`` or ``input.series`` for the series that triggered the job).
A study-level pipeline (``trigger: study``) declares named ``inputs`` instead, each a series
selection rule (or a ``prior`` to find at a pull source), wired as ``input.<name>``.
:func:`load_pipeline` rejects unknown operators, bad options, unwired or unknown inputs, type
mismatches and cycles with a :class:`ConfigError` naming the file, the line and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radloop.core.errors import ConfigError
from radloop.core.models import Priority, Series
from radloop.pipelines.ports import SeriesInput
from radloop.pipelines.registry import Operator, OperatorRegistry

PIPELINE_INPUT = "input"
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


class MatchRules(BaseModel):
    """Which completed series a pipeline accepts; every given rule must hold."""

    model_config = ConfigDict(extra="forbid")

    modality: list[str] = Field(default_factory=list)
    sop_class_uid: list[str] = Field(default_factory=list)
    series_description: str | None = Field(
        None, description="Regular expression searched in SeriesDescription."
    )
    called_ae: list[str] = Field(default_factory=list)
    calling_ae: list[str] = Field(default_factory=list)
    min_instances: int = Field(1, ge=1)

    _regex = field_validator("series_description")(classmethod(lambda cls, v: _check_regex(v)))

    def explain_mismatch(self, series: Series) -> str | None:
        """None if ``series`` satisfies every rule, else the first rule it breaks, in words."""
        if self.modality and series.modality not in self.modality:
            return f"Modality {series.modality or '(none)'} not in {self.modality}"
        if self.sop_class_uid and series.sop_class_uid not in self.sop_class_uid:
            return f"SOPClassUID {series.sop_class_uid} not in {self.sop_class_uid}"
        pattern = self.series_description
        if pattern and not re.search(pattern, series.series_description):
            return f"SeriesDescription {series.series_description!r} does not match /{pattern}/"
        if self.called_ae and series.called_ae not in self.called_ae:
            return f"called AE {series.called_ae} not in {self.called_ae}"
        if self.calling_ae and series.calling_ae not in self.calling_ae:
            return f"calling AE {series.calling_ae} not in {self.calling_ae}"
        if series.instance_count < self.min_instances:
            return f"{series.instance_count} instances, fewer than the {self.min_instances} required"
        return None


class PriorRule(BaseModel):
    """Where and how to find the same patient's previous study for a ``prior`` input.

    The source is searched (C-FIND / QIDO-RS, study level) by PatientID, ModalitiesInStudy and
    a StudyDate range ending on the current study's date; the newest other study is retrieved
    and its series are selected by ``series_description`` and ``min_instances``.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="Name of a configured pull source.")
    modality: str = ""
    series_description: str | None = Field(
        None, description="Regular expression searched in SeriesDescription."
    )
    min_instances: int = Field(1, ge=1)
    max_age_days: int = Field(3650, ge=1, description="Oldest prior considered, in days before the study.")
    prefer: Literal["most_instances", "latest"] = "most_instances"

    _regex = field_validator("series_description")(classmethod(lambda cls, v: _check_regex(v)))


class InputRule(MatchRules):
    """One named input of a study-level pipeline: which series of the study it takes.

    The selection rules are those of ``match``; of several matching series ``prefer`` picks the
    one with the most instances or the latest received. A ``prior`` input instead names where to
    find the patient's previous study; priors are never required (no prior → the input is None).
    """

    required: bool = True
    prefer: Literal["most_instances", "latest"] = "most_instances"
    prior: PriorRule | None = None

    @model_validator(mode="after")
    def _prior_not_required(self) -> InputRule:
        if self.prior is not None and "required" in self.model_fields_set and self.required:
            raise ValueError("a prior input cannot be required (no prior → the input is None)")
        if self.prior is not None:
            self.required = False
        return self


def _check_regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from e
    return v


class OperatorStep(BaseModel):
    """One operator of a pipeline file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    use: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    inputs: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v) or v == PIPELINE_INPUT:
            raise ValueError(
                f"operator id {v!r} must be lower-case letters, digits, '-', '_' and not 'input'"
            )
        return v


class ResourceNeeds(BaseModel):
    """Machine resources a pipeline needs; a generated XNAT Container Service command requests them."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(0, ge=0, description="GPUs the pipeline needs; 0 = it runs on CPU.")
    memory_mb: int | None = Field(None, ge=1, description="Memory to reserve, in MiB; None = no reservation.")
    queue: str | None = Field(
        None,
        min_length=1,
        description="Celery queue of its jobs; None = workers.gpu_queue if gpus else cpu_queue.",
    )


class PipelineSpec(BaseModel):
    """The whole pipeline file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    description: str = ""
    match: MatchRules = Field(default_factory=lambda: MatchRules())
    trigger: Literal["series", "study"] = Field(
        "series",
        description="'series': a job per matching series; 'study': a job per study, with named inputs.",
    )
    inputs: dict[str, InputRule] = Field(
        default_factory=dict, description="Named inputs of a study-level pipeline (wired as input.<name>)."
    )
    wait_s: float = Field(
        0.0, ge=0, le=86400, description="How long a study waits for a missing input before it is unmatched."
    )
    priority: Priority = Priority.normal
    operators: list[OperatorStep] = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)
    destination_kinds: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Result kinds (SEG, RTSTRUCT, SR, SC) sent to each named destination; "
        "a destination not named here gets every kind.",
    )
    resources: ResourceNeeds = Field(
        default_factory=lambda: ResourceNeeds(),
        description="What the pipeline needs from the machine it runs on.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"pipeline name {v!r} must be lower-case letters, digits, '-', '_'")
        return v

    @model_validator(mode="after")
    def _kinds_name_destinations(self) -> PipelineSpec:
        unknown = sorted(set(self.destination_kinds) - set(self.destinations))
        if unknown:
            raise ValueError(f"destination_kinds names {unknown}, not in destinations {self.destinations}")
        return self

    def series_inputs(self) -> dict[str, InputRule]:
        """The inputs chosen among the study's own series (every input but the priors)."""
        return {name: rule for name, rule in self.inputs.items() if rule.prior is None}

    def prior_inputs(self) -> dict[str, InputRule]:
        """The inputs found at a pull source (the patient's previous study)."""
        return {name: rule for name, rule in self.inputs.items() if rule.prior is not None}

    def sends(self, kind: str, destination: str) -> bool:
        """Whether this pipeline sends its results of ``kind`` to ``destination``."""
        kinds = self.destination_kinds.get(destination)
        return kinds is None or kind in kinds


@dataclass(frozen=True)
class BoundStep:
    """A validated step: its operator class, parsed options and input wiring."""

    step: OperatorStep
    operator: type[Operator[Any]]
    options: BaseModel

    def instantiate(self) -> Operator[Any]:
        """A fresh operator with this step's options."""
        return self.operator(self.options)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: the spec plus its steps in execution (topological) order."""

    spec: PipelineSpec
    steps: tuple[BoundStep, ...]
    source: Path

    @property
    def name(self) -> str:
        return self.spec.name


def load_pipeline(path: Path, registry: OperatorRegistry) -> Pipeline:
    """Read and fully validate a pipeline file; :class:`ConfigError` names file, line and field."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read pipeline file: {e}") from e
    return parse_pipeline_text(text, path, registry)


def parse_pipeline_text(text: str, path: Path, registry: OperatorRegistry) -> Pipeline:
    """Validate pipeline YAML ``text``; ``path`` is only used to name the source in errors."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline file must hold a mapping")
    lines = _LineFinder(root)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise ConfigError(f"{path}:{lines.line(loc)}: {_dotted(loc)}: {err['msg']}") from e
    return _bind(spec, path, registry, lines)


def _bind(spec: PipelineSpec, path: Path, registry: OperatorRegistry, lines: _LineFinder) -> Pipeline:
    def fail(loc: tuple[str | int, ...], msg: str) -> ConfigError:
        return ConfigError(f"{path}:{lines.line(loc)}: {_dotted(loc)}: {msg}")

    _check_inputs(spec, fail)
    bound: dict[str, BoundStep] = {}
    for i, step in enumerate(spec.operators):
        if step.id in bound:
            raise fail(("operators", i, "id"), f"duplicate operator id {step.id!r}")
        if step.use not in registry:
            raise fail(
                ("operators", i, "use"),
                f"unknown operator {step.use!r} (known: {', '.join(registry.names())})",
            )
        cls = registry.get(step.use)
        try:
            options = cls.Options.model_validate(step.with_)
        except ValidationError as e:
            err = e.errors()[0]
            raise fail(("operators", i, "with", *err["loc"]), err["msg"]) from e
        bound[step.id] = BoundStep(step, cls, options)
    for i, step in enumerate(spec.operators):
        _check_wiring(i, step, bound, fail, _input_names(spec))
    graph = {
        sid: {src.split(".")[0] for src in b.step.inputs.values()} - {PIPELINE_INPUT}
        for sid, b in bound.items()
    }
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        cycle = " → ".join(str(n) for n in e.args[1])
        raise ConfigError(
            f"{path}:{lines.line(('operators',))}: operators: cycle between operators: {cycle}"
        ) from e
    return Pipeline(spec=spec, steps=tuple(bound[sid] for sid in order), source=path)


def _input_names(spec: PipelineSpec) -> list[str]:
    """What ``input.<name>`` may name: ``series`` for series-level pipelines, else the declared inputs."""
    return list(spec.inputs) if spec.trigger == "study" else ["series"]


def _check_inputs(spec: PipelineSpec, fail: Any) -> None:
    """Study-level pipelines declare named inputs, at least one of them required; series-level ones none."""
    if spec.trigger == "series":
        if spec.inputs:
            raise fail(
                ("inputs",), "named inputs need 'trigger: study' (a series-level pipeline has input.series)"
            )
        return
    if not spec.inputs:
        raise fail(("trigger",), "a study-level pipeline declares its named inputs under 'inputs'")
    if "match" in spec.model_fields_set:
        raise fail(
            ("match",), "a study-level pipeline selects series per input: put the rules under 'inputs'"
        )
    for name in spec.inputs:
        if not _ID_RE.match(name):
            raise fail(("inputs", name), f"input name {name!r} must be lower-case letters, digits, '-', '_'")
    if not any(rule.required for rule in spec.series_inputs().values()):
        raise fail(("inputs",), "a study-level pipeline needs at least one required (non-prior) input")


def _check_wiring(
    i: int, step: OperatorStep, bound: dict[str, BoundStep], fail: Any, input_names: list[str]
) -> None:
    cls = bound[step.id].operator
    for port in step.inputs:
        if port not in cls.inputs:
            raise fail(
                ("operators", i, "inputs", port),
                f"{step.use} has no input {port!r} (has: {sorted(cls.inputs)})",
            )
    for port, want in cls.inputs.items():
        loc = ("operators", i, "inputs", port)
        source = step.inputs.get(port)
        if source is None and port in cls.optional_inputs:
            continue  # an optional input may stay unwired (None)
        if source is None:
            raise fail(("operators", i, "inputs"), f"input {port!r} of {step.use} is not wired")
        src_id, _, src_port = source.partition(".")
        if src_id == PIPELINE_INPUT:
            have: type = SeriesInput
            if src_port not in input_names:
                known = ", ".join(f"input.{n}" for n in input_names)
                raise fail(loc, f"{source!r} names no input of this pipeline (has: {known})")
        elif src_id not in bound:
            raise fail(loc, f"{source!r} names no operator of this pipeline")
        elif src_port not in bound[src_id].operator.outputs:
            raise fail(loc, f"operator {src_id!r} has no output {src_port!r}")
        else:
            have = bound[src_id].operator.outputs[src_port]
        if not issubclass(have, want):
            raise fail(
                loc, f"type mismatch: {source} is {have.__name__}, {step.use}.{port} needs {want.__name__}"
            )


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _LineFinder:
    """Maps a field path (as pydantic reports it) to a 1-based line of the YAML file."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: tuple[Any, ...]) -> int:
        node = self.root
        best = 1 if node is None else node.start_mark.line + 1
        for part in loc:
            node = self._child(node, part)
            if node is None:
                break
            best = node.start_mark.line + 1
        return best

    @staticmethod
    def _child(node: yaml.Node | None, part: Any) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    return value
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            return node.value[part]
        return None
