"""Which results go where: a pipeline's ``destination_kinds`` and a destination's ``accepts``."""

from __future__ import annotations

from pathlib import Path

import pytest

from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.runner import JobRunner
from radloop.pipelines.spec import parse_pipeline_text

PIPELINE = """
name: demo
version: "1"
operators:
  - id: volume
    use: dicom.series_to_volume
    inputs: {series: input.series}
destinations: [research, clinical, unconfigured]
destination_kinds:
  clinical: [SC, SR]
"""


def test_destination_kinds_and_accepts_choose_the_deliveries(tmp_path: Path) -> None:
    pipeline = parse_pipeline_text(PIPELINE, Path("demo.yaml"), builtin_registry())
    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path),
            "destinations": [
                {
                    "kind": "folder",
                    "name": "research",
                    "path": str(tmp_path / "r"),
                    "accepts": ["SEG", "RTSTRUCT", "SR"],
                },
                {"kind": "dicom", "name": "clinical", "host": "127.0.0.1", "port": 104, "ae_title": "PACS"},
            ],
        }
    )
    runner = JobRunner(settings, engine=None, catalog=None)  # type: ignore[arg-type]

    def where(kind: str) -> list[str]:
        return [d for d in pipeline.spec.destinations if runner._delivers(pipeline, kind, d)]

    assert where("SEG") == ["research", "unconfigured"]
    assert where("SR") == ["research", "clinical", "unconfigured"]
    assert where("SC") == ["clinical", "unconfigured"]  # unconfigured: the outbox will show why


def test_destination_kinds_must_name_the_pipelines_destinations() -> None:
    bad = PIPELINE.replace("  clinical: [SC, SR]", "  archive: [SEG]")
    with pytest.raises(ConfigError, match=r"destination_kinds names \['archive'\]"):
        parse_pipeline_text(bad, Path("demo.yaml"), builtin_registry())


def test_accepts_takes_upper_case_kinds() -> None:
    with pytest.raises(ValueError, match="upper-case"):
        Settings.model_validate(
            {"destinations": [{"kind": "folder", "name": "f", "path": "/tmp/x", "accepts": ["seg"]}]}
        )
