"""Pipeline files are validated fully before anything runs; errors name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from radloop.core.errors import ConfigError
from radloop.pipelines.catalog import REFERENCE_DIR
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.spec import load_pipeline, parse_pipeline_text

GOOD = """\
name: demo
version: "1"
match: {modality: [MR]}
operators:
  - id: volume
    use: dicom.series_to_volume
    inputs: {series: input.series}
  - id: brain
    use: deepbet.brain_extraction
    inputs: {volume: volume.volume}
  - id: seg
    use: writer.seg
    inputs: {labelmap: brain.labelmap}
"""


def _parse(text: str) -> object:
    return parse_pipeline_text(text, Path("demo.yaml"), builtin_registry())


def test_reference_pipelines_are_valid() -> None:
    files = sorted(REFERENCE_DIR.glob("*.yaml"))
    assert files
    for f in files:
        p = load_pipeline(f, builtin_registry())
        assert p.steps


def test_good_pipeline_orders_steps_topologically() -> None:
    text = GOOD.replace(
        "  - id: volume\n    use: dicom.series_to_volume\n    inputs: {series: input.series}\n", ""
    )
    text += "  - id: volume\n    use: dicom.series_to_volume\n    inputs: {series: input.series}\n"
    p = _parse(text)
    assert [s.step.id for s in p.steps] == ["volume", "brain", "seg"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("deepbet.brain_extraction", "deepbet.no_such_op"),
            r"demo.yaml:9: operators\[1\].use: unknown operator 'deepbet.no_such_op'",
        ),
        (
            ("inputs: {volume: volume.volume}", "inputs: {}"),
            r"demo.yaml:10: operators\[1\].inputs: input 'volume' of deepbet.brain_extraction is not wired",
        ),
        (
            ("inputs: {volume: volume.volume}", "inputs: {volume: input.series}"),
            r"demo.yaml:10: operators\[1\].inputs.volume: type mismatch: input.series is SeriesInput, deepbet.brain_extraction.volume needs Volume",
        ),
        (
            ("inputs: {labelmap: brain.labelmap}", "inputs: {labelmap: nowhere.labelmap}"),
            r"demo.yaml:13: operators\[2\].inputs.labelmap: 'nowhere.labelmap' names no operator",
        ),
        (
            ("inputs: {labelmap: brain.labelmap}", "inputs: {labelmap: brain.mask}"),
            r"operators\[2\].inputs.labelmap: operator 'brain' has no output 'mask'",
        ),
        (('version: "1"', 'version: "1"\nbogus: 3'), r"demo.yaml:3: bogus: Extra inputs are not permitted"),
        (
            ("match: {modality: [MR]}", "match: {series_description: '(unclosed'}"),
            r"demo.yaml:3: match.series_description",
        ),
        (
            (
                "    inputs: {labelmap: brain.labelmap}",
                "    with: {fractional: maybe}\n    inputs: {labelmap: brain.labelmap}",
            ),
            r"demo.yaml:13: operators\[2\].with.fractional",
        ),
    ],
)
def test_invalid_pipelines_name_file_line_and_field(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError, match=expected):
        _parse(text)


def test_order_in_file_does_not_matter_and_ids_are_unique() -> None:
    backwards = """\
name: cyc
version: "1"
operators:
  - id: a
    use: deepbet.brain_extraction
    inputs: {volume: b.volume}
  - id: b
    use: dicom.series_to_volume
    inputs: {series: input.series}
"""
    _parse(backwards)  # an operator may use one defined below it
    with pytest.raises(ConfigError, match="duplicate operator id"):
        _parse(backwards.replace("id: b", "id: a"))


def test_cycle_between_operators(tmp_path: Path) -> None:
    from radloop.pipelines.ports import Volume
    from radloop.pipelines.registry import Operator, OperatorRegistry

    class Smooth(Operator):
        name = "test.smooth"
        inputs = {"volume": Volume}
        outputs = {"volume": Volume}

        def run(self, ctx, inputs):  # type: ignore[no-untyped-def]
            return dict(inputs)

    registry = OperatorRegistry()
    registry.register(Smooth)
    text = """\
name: loop
version: "1"
operators:
  - id: a
    use: test.smooth
    inputs: {volume: b.volume}
  - id: b
    use: test.smooth
    inputs: {volume: a.volume}
"""
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"loop.yaml:4: operators: cycle between operators"):
        load_pipeline(path, registry)
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register(Smooth)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "missing.yaml", builtin_registry())
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(bad, builtin_registry())
