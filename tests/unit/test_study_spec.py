"""Study-level pipelines (``trigger: study``): named inputs are validated like everything else in a
pipeline file, and a study's series are chosen per input by the rules, with the tie-break."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from radloop.connector.study_routing import select_inputs
from radloop.core.errors import ConfigError
from radloop.core.models import Series, SeriesState, utcnow
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.spec import Pipeline, parse_pipeline_text

STUDY = """\
name: two-series
version: "1"
trigger: study
wait_s: 30
inputs:
  t1: {modality: [MR], series_description: "(?i)t1|mprage", min_instances: 3}
  t2: {modality: [MR], series_description: "(?i)t2", required: true, prefer: latest}
  prior_t1:
    prior: {source: pacs, modality: MR, max_age_days: 400}
    required: false
operators:
  - id: t1-volume
    use: dicom.series_to_volume
    inputs: {series: input.t1}
  - id: t2-volume
    use: dicom.series_to_volume
    inputs: {series: input.t2}
"""


def _parse(text: str) -> Pipeline:
    return parse_pipeline_text(text, Path("study.yaml"), builtin_registry())


def test_a_study_level_pipeline_declares_named_inputs_wired_by_name() -> None:
    p = _parse(STUDY)
    assert p.spec.trigger == "study" and p.spec.wait_s == 30
    assert list(p.spec.series_inputs()) == ["t1", "t2"] and list(p.spec.prior_inputs()) == ["prior_t1"]
    assert p.spec.inputs["prior_t1"].required is False
    assert [s.step.inputs["series"] for s in p.steps] == ["input.t1", "input.t2"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("{series: input.t2}", "{series: input.flair}"),
            r"study.yaml:17: operators\[1\].inputs.series: 'input.flair' names no input of this pipeline "
            r"\(has: input.t1, input.t2, input.prior_t1\)",
        ),
        (
            ("(?i)t1|mprage", "(?i)t1|("),
            r"study.yaml:6: inputs.t1.series_description: Value error, not a valid regular expression",
        ),
        (
            ("prefer: latest", "prefer: biggest"),
            r"study.yaml:7: inputs.t2.prefer: Input should be 'most_instances' or 'latest'",
        ),
        (
            ("    required: false", "    required: true"),
            r"study.yaml:9: inputs.prior_t1: Value error, a prior input cannot be required",
        ),
        (
            ("trigger: study\n", "trigger: study\nmatch: {modality: [MR]}\n"),
            r"study.yaml:4: match: a study-level pipeline selects series per input",
        ),
        (("trigger: study", "trigger: series"), r"study.yaml:6: inputs: named inputs need 'trigger: study'"),
        (
            ("{series: input.t1}", "{volume: input.t1}"),
            r"study.yaml:14: operators\[0\].inputs.volume: dicom.series_to_volume has no input 'volume'",
        ),
        (
            (
                "    use: dicom.series_to_volume\n    inputs: {series: input.t2}",
                "    use: deepbet.brain_extraction\n    inputs: {volume: input.t2}",
            ),
            r"operators\[1\].inputs.volume: type mismatch: input.t2 is SeriesInput, "
            r"deepbet.brain_extraction.volume needs Volume",
        ),
        (("  t1: {", "  T1: {"), r"study.yaml:6: inputs.T1: input name 'T1' must be lower-case"),
    ],
)
def test_invalid_study_pipelines_name_file_line_and_field(change: tuple[str, str], expected: str) -> None:
    text = STUDY.replace(*change)
    assert text != STUDY
    with pytest.raises(ConfigError, match=expected):
        _parse(text)


def test_a_study_pipeline_needs_a_required_input() -> None:
    text = STUDY.replace("min_instances: 3}", "min_instances: 3, required: false}").replace(
        "required: true, ", "required: false, "
    )
    with pytest.raises(
        ConfigError, match=r"study.yaml:\d+: inputs: a study-level pipeline needs at least one required"
    ):
        _parse(text)


def _series(uid: str, description: str, count: int, age_s: float = 0.0) -> Series:
    return Series(
        series_instance_uid=uid,
        modality="MR",
        series_description=description,
        instance_count=count,
        state=SeriesState.complete,
        last_received_at=utcnow() - timedelta(seconds=age_s),
        study_id=1,
    )


def test_inputs_take_the_series_their_rules_choose_and_name_what_found_nothing() -> None:
    rules = _parse(STUDY).spec.series_inputs()
    small_t1, big_t1 = _series("1", "T1 small", 3), _series("2", "MPRAGE", 170)
    old_t2, new_t2 = _series("3", "T2 TSE", 40, age_s=60), _series("4", "t2 tse repeat", 20)

    chosen = select_inputs(rules, [small_t1, big_t1, old_t2, new_t2])
    assert chosen.chosen == {"t1": big_t1, "t2": new_t2}  # most instances; latest
    assert not chosen.missing and not chosen.required_missing

    only_t1 = select_inputs(rules, [big_t1, _series("5", "T1 scout", 2)])
    assert only_t1.required_missing == ["t2"]
    assert "SeriesDescription 'MPRAGE' does not match /(?i)t2/" in only_t1.missing["t2"]
