"""The XNAT Container Service command generated for a pipeline, checked against a JSON Schema
written from the Container Service's documented command format (tests/data/xnat_command.schema.json)
and against the checks the Container Service applies when a command is saved."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from radloop.core.settings import XnatCommandSettings, load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.spec import Pipeline, parse_pipeline_text
from radloop.xnat_plugin.command import build_command, check_command

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "xnat_command.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
IMAGE = "registry.example.org/radloop-xnat:1.2.3"

GPU_PIPELINE = """
name: brain-gpu
version: 2.0.0
match: {modality: [MR]}
resources: {gpus: 1, memory_mb: 8192}
operators:
  - {id: volume, use: dicom.series_to_volume, inputs: {series: input.series}}
  - {id: brain, use: deepbet.brain_extraction, inputs: {volume: volume.volume}}
  - {id: seg, use: writer.seg, inputs: {labelmap: brain.labelmap}}
"""


def _brain() -> Pipeline:
    return PipelineCatalog.load(load_settings(None), builtin_registry()).get("brain-extraction")


def _schema_errors(command: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(command)]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_brain_command_validates_and_names_image_mounts_inputs_outputs() -> None:
    command = build_command(_brain(), XnatCommandSettings(image=IMAGE))
    assert _schema_errors(command) == []
    assert check_command(command) == []
    assert command["image"] == IMAGE
    assert command["command-line"].startswith(
        "radloop run-pipeline brain-extraction --input /input --output /output"
    )
    assert {m["name"]: (m["path"], m["writable"]) for m in command["mounts"]} == {
        "input": ("/input", False),
        "output": ("/output", True),
    }
    assert [i["name"] for i in command["inputs"]] == ["scans"]
    assert "#SCANS#" in command["command-line"]
    assert command["outputs"] == [
        {
            "name": "seg",
            "description": "SEG results (DICOM), one file per result",
            "required": False,
            "mount": "output",
            "path": "SEG",
        }
    ]
    session, scan = command["xnat"]
    assert session["contexts"] == ["xnat:imageSessionData"]
    assert session["external-inputs"][0]["type"] == "Session"
    assert session["external-inputs"][0]["provides-files-for-command-mount"] == "input"
    assert session["output-handlers"] == [
        {
            "name": "seg-resource",
            "accepts-command-output": "seg",
            "as-a-child-of": "session",
            "type": "Resource",
            "label": "SEG",
            "format": "DICOM",
            "tags": ["radloop"],
        }
    ]
    assert scan["contexts"] == ["xnat:imageScanData"]
    derived = {d["name"]: d for d in scan["derived-inputs"]}
    assert derived["scan-dicom"]["provides-files-for-command-mount"] == "input"
    assert derived["scan-id"]["provides-value-for-command-input"] == "scans"
    assert scan["output-handlers"][0]["as-a-child-of"] == "scan"
    for key in ("gpus", "generic-resources", "reserve-memory", "runtime"):
        assert key not in command, f"the brain pipeline runs on CPU: no {key}"


def test_gpu_pipeline_requests_gpus_and_memory() -> None:
    pipeline = parse_pipeline_text(GPU_PIPELINE, Path("brain-gpu.yaml"), builtin_registry())
    command = build_command(pipeline, XnatCommandSettings(image=IMAGE, gpu_resource_name="nvidia.com/gpu"))
    assert _schema_errors(command) == []
    assert check_command(command) == []
    assert command["generic-resources"] == {"nvidia.com/gpu": "1"}
    assert command["gpus"] == "1"
    assert command["reserve-memory"] == 8192
    assert command["version"] == "2.0.0"


@pytest.mark.parametrize(
    ("change", "schema_path"),
    [
        (lambda c: c.update(image="radloop-xnat"), "image"),
        (lambda c: c["outputs"].append({"name": "bad name", "mount": "output"}), "outputs/1/name"),
        (lambda c: c["xnat"][0]["output-handlers"][0].pop("label"), "xnat/0/output-handlers/0"),
        (
            lambda c: c["xnat"][0]["external-inputs"][0].update(type="Experiment"),
            "xnat/0/external-inputs/0/type",
        ),
        (lambda c: c["mounts"][0].update(writeable=True), "mounts/0"),
    ],
)
def test_schema_and_checks_refuse_broken_commands(change: Any, schema_path: str) -> None:
    command = copy.deepcopy(build_command(_brain(), XnatCommandSettings(image=IMAGE)))
    change(command)
    errors = _schema_errors(command)
    assert any(e.startswith(schema_path) for e in errors), errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["outputs"][0].update(mount="nowhere"), "references unknown mount 'nowhere'"),
        (lambda c: c["xnat"][0]["output-handlers"].clear(), "command output 'seg' has no output handler"),
        (
            lambda c: c["xnat"][1]["derived-inputs"][0].update({"derived-from-wrapper-input": "session"}),
            "derived from unknown input 'session'",
        ),
        (
            lambda c: c["xnat"][0]["output-handlers"][0].update({"as-a-child-of": "project"}),
            "as-a-child-of 'project' is unknown",
        ),
        (
            lambda c: c["xnat"][1]["derived-inputs"][1].update(
                {"provides-value-for-command-input": "series"}
            ),
            "unknown command input 'series'",
        ),
    ],
)
def test_cross_references_are_checked_as_the_container_service_does(change: Any, message: str) -> None:
    command = copy.deepcopy(build_command(_brain(), XnatCommandSettings(image=IMAGE)))
    change(command)
    assert any(message in e for e in check_command(command)), check_command(command)


def test_schema_accepts_the_older_spelling_of_published_commands() -> None:
    """Commands in the wild (NrgXnat's images) use string booleans and the older key names."""
    older = {
        "name": "dcm2niix",
        "version": "1.3",
        "schema-version": "1.0",
        "type": "docker",
        "image": "xnat/dcm2niix:1.3",
        "command-line": "dcm2niix -o /output /input",
        "mounts": [
            {"name": "dicom-in", "writable": "false", "path": "/input"},
            {"name": "nifti-out", "writable": "true", "path": "/output"},
        ],
        "outputs": [{"name": "nifti", "mount": "nifti-out", "required": "true"}],
        "xnat": [
            {
                "name": "dcm2niix-scan",
                "contexts": ["xnat:imageScanData"],
                "external-inputs": [{"name": "scan", "type": "Scan", "required": True}],
                "derived-inputs": [
                    {
                        "name": "scan-dicoms",
                        "type": "Resource",
                        "derived-from-xnat-input": "scan",
                        "provides-files-for-command-mount": "dicom-in",
                    }
                ],
                "output-handlers": [
                    {
                        "name": "nifti-resource",
                        "accepts-command-output": "nifti",
                        "as-a-child-of-xnat-input": "scan",
                        "type": "Resource",
                        "label": "NIFTI",
                    }
                ],
            }
        ],
    }
    assert _schema_errors(older) == []


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no RADLOOP_* settings from the outside
    return subprocess.run(
        [sys.executable, "-m", "radloop.cli", "xnat", "command", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_cli_writes_the_image_label_and_refuses_an_untagged_image(tmp_path: Path) -> None:
    label = _cli(
        tmp_path, "brain-extraction", "--image", IMAGE, "--label", "-o", str(tmp_path / "label.json")
    )
    assert label.returncode == 0, label.stderr
    (command,) = json.loads((tmp_path / "label.json").read_text())  # org.nrg.commands holds a list
    assert _schema_errors(command) == [] and command["image"] == IMAGE
    untagged = _cli(tmp_path, "brain-extraction", "--image", "radloop")
    assert untagged.returncode == 2 and "needs a tag" in untagged.stderr


def test_every_result_kind_of_a_pipeline_gets_an_output_and_handlers() -> None:
    pipeline = PipelineCatalog.load(load_settings(None), builtin_registry()).get(
        "brain-extraction-all-outputs"
    )
    command = build_command(pipeline, XnatCommandSettings(image=IMAGE))
    assert _schema_errors(command) == [] and check_command(command) == []
    kinds = sorted(o["path"] for o in command["outputs"])
    assert kinds == ["RTSTRUCT", "SC", "SEG", "SR"]
    for wrapper in command["xnat"]:
        assert sorted(h["label"] for h in wrapper["output-handlers"]) == kinds


def test_the_command_json_in_deploy_is_current() -> None:
    """deploy/xnat/ holds the brain pipeline's command, as `radloop xnat command` writes it."""
    shipped = json.loads(
        (Path(__file__).parents[2] / "deploy" / "xnat" / "radloop-brain-extraction.command.json").read_text()
    )
    assert shipped == build_command(_brain(), XnatCommandSettings())
    assert _schema_errors(shipped) == []
