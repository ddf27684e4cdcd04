"""The operator contract and the step loop shared by jobs and ``run-pipeline``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from radloop.core.errors import ConfigError
from radloop.core.refs import SeriesRef
from radloop.pipelines.ports import SeriesInput
from radloop.pipelines.registry import NoOptions, Operator, OperatorContext, OperatorRegistry
from radloop.pipelines.spec import BoundStep, parse_pipeline_text
from radloop.pipelines.steps import run_steps


class RepeatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int = 1


class Repeat(Operator[RepeatOptions]):
    """Passes its series on, after timing ``times`` rounds of two stages."""

    name: ClassVar[str] = "test.repeat"
    inputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}
    outputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        for _ in range(self.options.times):
            with ctx.stages.stage("pre"):
                pass
            with ctx.stages.stage("infer"):
                pass
        return {"series": inputs["series"]}


class Passthrough(Operator[NoOptions]):
    name: ClassVar[str] = "test.passthrough"
    inputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}
    outputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {"series": inputs["series"]}


PIPELINE = """\
name: stages
version: "1"
operators:
  - id: first
    use: test.repeat
    with: {times: 3}
    inputs: {series: input.series}
  - id: second
    use: test.passthrough
    inputs: {series: first.series}
"""


def _registry() -> OperatorRegistry:
    registry = OperatorRegistry()
    registry.register(Repeat)
    registry.register(Passthrough)
    return registry


def test_options_model_is_declared_once_as_the_type_argument() -> None:
    assert Repeat.Options is RepeatOptions
    assert Passthrough.Options is NoOptions
    pipeline = parse_pipeline_text(PIPELINE, Path("stages.yaml"), _registry())
    assert pipeline.steps[0].options == RepeatOptions(times=3)
    with pytest.raises(ConfigError, match=r"stages.yaml:6: operators\[0\].with.speed"):
        parse_pipeline_text(PIPELINE.replace("times: 3", "speed: 3"), Path("stages.yaml"), _registry())
    with pytest.raises(TypeError, match="'test.repeat': options must be RepeatOptions, got NoOptions"):
        Repeat(NoOptions())  # type: ignore[arg-type]


def test_step_loop_gives_each_step_a_fresh_stage_timer(tmp_path: Path) -> None:
    pipeline = parse_pipeline_text(PIPELINE, Path("stages.yaml"), _registry())
    series = SeriesInput(ref=SeriesRef("1.2.3", "1.2.3.4"), modality="CT", paths=())
    seen: list[tuple[str, dict[str, float], str]] = []

    @contextmanager
    def hook(bound: BoundStep, ctx: OperatorContext) -> Iterator[None]:
        yield
        seen.append((bound.step.id, dict(ctx.stages.seconds), ctx.logger.name))

    ctx = OperatorContext(job_id=1, idempotency_key="k", workdir=tmp_path)
    values = run_steps(pipeline, series, ctx, hook)

    assert values["second"]["series"] is series
    assert [(step_id, list(stages), logger) for step_id, stages, logger in seen] == [
        ("first", ["pre", "infer"], "radloop.job.test.repeat"),
        ("second", [], "radloop.job.test.passthrough"),
    ]
    assert all(seconds >= 0.0 for seconds in seen[0][1].values())
