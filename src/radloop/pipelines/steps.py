"""The step loop: walk a pipeline's DAG in order and run each operator on its wired inputs.

One loop serves every way radloop runs a pipeline: the job runner (:mod:`.runner`), which
records each step in a ``job_step`` row, and ``radloop run-pipeline`` (:mod:`radloop.xnat_plugin.
run_pipeline`), which runs without a database and times each step in the log. What differs is a
*step hook*: a context manager entered around each operator run, given the step and its context
(with a fresh :class:`~radloop.pipelines.timing.StageTimer` in ``ctx.stages``). An exception
raised by the operator passes through the hook, which may record it, and stops the loop.

A study-level pipeline's optional inputs (``required: false``, priors) may be None: an operator
fed None on an input it does not list in ``optional_inputs`` is skipped and its outputs are None
in turn, so a missing prior skips the branch that needed it instead of failing the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from radloop.core.errors import PermanentJobError
from radloop.pipelines.ports import DicomObjects, SeriesInput
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.spec import PIPELINE_INPUT, BoundStep, Pipeline
from radloop.pipelines.timing import StageTimer

log = logging.getLogger(__name__)

Values = dict[str, dict[str, Any]]
"""What a run has computed so far: operator id (or ``input``) → output port → value."""

StepHook = Callable[[BoundStep, OperatorContext], AbstractContextManager[None]]
"""Entered around each step's operator run (record it, time it, refuse to start it)."""


PipelineInputs = SeriesInput | Mapping[str, SeriesInput | None]
"""The series a run starts from: one (``input.series``) or named ones (``input.<name>``, None if absent)."""


def run_steps(
    pipeline: Pipeline, series_input: PipelineInputs, ctx: OperatorContext, hook: StepHook
) -> Values:
    """Run every step of ``pipeline`` on ``series_input`` in order, each inside ``hook``."""
    if isinstance(series_input, SeriesInput) and pipeline.spec.trigger == "study":
        raise PermanentJobError(
            f"{pipeline.name} is a study-level pipeline: it takes its inputs "
            f"{sorted(pipeline.spec.inputs)} by name, not one series"
        )
    named = {"series": series_input} if isinstance(series_input, SeriesInput) else dict(series_input)
    values: Values = {PIPELINE_INPUT: named}
    for bound in pipeline.steps:
        ctx.logger = logging.getLogger(f"radloop.job.{bound.step.use}")
        ctx.stages = StageTimer()
        absent = _absent_inputs(bound, values)
        if absent:
            log.info("%s: %s skipped: no value for %s", ctx.pipeline_name, bound.step.id, ", ".join(absent))
            values[bound.step.id] = dict.fromkeys(bound.operator.outputs)
            continue
        with hook(bound, ctx):
            values[bound.step.id] = run_step(bound, values, ctx)
    return values


def _absent_inputs(bound: BoundStep, values: Values) -> list[str]:
    """The inputs of ``bound`` that are None although its operator needs them."""
    return [
        f"{port} ({src})"
        for port, src in bound.step.inputs.items()
        if port not in bound.operator.optional_inputs and _resolve(values, src) is None
    ]


def run_step(bound: BoundStep, values: Values, ctx: OperatorContext) -> dict[str, Any]:
    """Run one operator on the outputs computed so far (``values``: operator id → port → value)."""
    step = bound.step
    inputs = {port: _resolve(values, src) for port, src in step.inputs.items()}
    outputs = bound.instantiate().run(ctx, inputs)
    missing = set(bound.operator.outputs) - set(outputs)
    if missing:
        raise PermanentJobError(f"operator {step.id} ({step.use}) did not produce {sorted(missing)}")
    return outputs


def written_objects(values: Values) -> list[DicomObjects]:
    """The DICOM objects the run's writers produced, in step order."""
    return [v for outputs in values.values() for v in outputs.values() if isinstance(v, DicomObjects)]


def run_pipeline_offline(
    pipeline: Pipeline, series_input: PipelineInputs, ctx: OperatorContext
) -> list[DicomObjects]:
    """Run ``pipeline`` on one series without a database (no job rows, no outbox): the DICOM objects
    its writers produced, in ``ctx.workdir``. Used where radloop runs outside a server, e.g. as an
    XNAT Container Service command (:mod:`radloop.xnat_plugin.run_pipeline`). Each operator is
    timed in the log, as jobs time theirs in ``job_step`` rows.
    """
    return written_objects(run_steps(pipeline, series_input, ctx, timed_in_log))


@contextmanager
def timed_in_log(bound: BoundStep, ctx: OperatorContext) -> Iterator[None]:
    """Step hook of offline runs: log each step that succeeds, with its time."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    log.info("%s: %s (%s) succeeded in %.2f s", ctx.pipeline_name, bound.step.id, bound.step.use, seconds)


def _resolve(values: Values, source: str) -> Any:
    op_id, _, port = source.partition(".")
    return values[op_id].get(port)
