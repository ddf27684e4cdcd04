"""XNAT Container Service commands for radloop pipelines (``radloop xnat command PIPELINE``).

A *command* (the Container Service's JSON format, ``schema-version`` 1.0) tells XNAT how to run a
Docker image: its ``command-line``, the ``mounts`` it reads and writes, its ``inputs`` and
``outputs``; its ``xnat`` *wrappers* say where in XNAT it can be launched (``contexts``), which
XNAT objects feed it (``external-inputs``, ``derived-inputs``: files for a mount, values for an
input) and what becomes of its outputs (``output-handlers``: e.g. a resource on the session).

The command generated for a pipeline runs ``radloop run-pipeline NAME --input /input --output
/output`` in radloop's image (``deploy/xnat/Dockerfile``) and has two wrappers:

* ``radloop-<pipeline>-session`` (context ``xnat:imageSessionData``): the session is mounted at
  ``/input``; the pipeline runs on every scan its match rules accept (or on the scan ids given in
  the ``scans`` input); each result kind becomes a session resource (``SEG``, ``RTSTRUCT``, …);
* ``radloop-<pipeline>-scan`` (context ``xnat:imageScanData``): the scan's ``DICOM`` resource is
  mounted at ``/input`` and the results become resources of that scan.

A pipeline that declares ``resources.gpus`` gets ``gpus`` (Docker) and ``generic-resources``
(Docker Swarm) requests; ``resources.memory_mb`` becomes ``reserve-memory``.
:func:`check_command` applies the checks the Container Service applies when a command is saved.
"""

from __future__ import annotations

import re
from typing import Any

from radloop.core.settings import XnatCommandSettings
from radloop.pipelines.ports import DicomObjects
from radloop.pipelines.spec import Pipeline
from radloop.xnat_plugin.labels import RESULT_KINDS

INPUT_MOUNT = "input"
OUTPUT_MOUNT = "output"
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]+$")
WRAPPER_INPUT_TYPES = (
    "string",
    "boolean",
    "number",
    "file",
    "Directory",
    "File[]",
    "File",
    "Project",
    "ProjectAsset",
    "Subject",
    "SubjectAssessor",
    "Session",
    "Scan",
    "Assessor",
    "Resource",
    "Config",
)
OUTPUT_HANDLER_TYPES = ("Resource", "Assessor")


def output_kinds(pipeline: Pipeline) -> list[str]:
    """Result kinds the pipeline writes, from its writers' DicomObjects output ports: ``seg`` → SEG,
    ``rtstruct`` → RTSTRUCT, ``sr`` → SR, ``sc`` → SC, the kinds that
    :func:`~radloop.xnat_plugin.labels.result_kind` gives their files; other ports give ``DICOM``."""
    kinds: list[str] = []
    for bound in pipeline.steps:
        for port, port_type in bound.operator.outputs.items():
            if not issubclass(port_type, DicomObjects):
                continue
            kind = port.upper() if port.upper() in RESULT_KINDS else "DICOM"
            if kind not in kinds:
                kinds.append(kind)
    return kinds


def build_command(
    pipeline: Pipeline, settings: XnatCommandSettings, scan_resource: str = "DICOM"
) -> dict[str, Any]:
    """The Container Service command (a JSON-ready dict) that runs ``pipeline`` from XNAT."""
    name = f"radloop-{pipeline.name}"
    kinds = output_kinds(pipeline)
    command: dict[str, Any] = {
        "name": name,
        "label": f"radloop {pipeline.name}",
        "description": pipeline.spec.description or f"radloop pipeline {pipeline.name}",
        "version": pipeline.spec.version,
        "schema-version": "1.0",
        "image": settings.image,
        "type": "docker",
        "command-line": f"radloop run-pipeline {pipeline.name} --input /{INPUT_MOUNT} "
        f"--output /{OUTPUT_MOUNT} --scans=#SCANS#",
        "override-entrypoint": True,
        "mounts": [
            {"name": INPUT_MOUNT, "writable": False, "path": f"/{INPUT_MOUNT}"},
            {"name": OUTPUT_MOUNT, "writable": True, "path": f"/{OUTPUT_MOUNT}"},
        ],
        "environment-variables": {},
        "ports": {},
        "inputs": [_scans_input()],
        "outputs": [_output(kind) for kind in kinds],
        "xnat": [
            _session_wrapper(name, pipeline, kinds),
            _scan_wrapper(name, pipeline, kinds, scan_resource),
        ],
    }
    command.update(_resource_requests(pipeline, settings))
    return command


def _scans_input() -> dict[str, Any]:
    return {
        "name": "scans",
        "description": "Scan IDs to run on, comma-separated; empty = every scan the pipeline accepts.",
        "type": "string",
        "required": False,
        "default-value": "",
        "replacement-key": "#SCANS#",
    }


def _output(kind: str) -> dict[str, Any]:
    return {
        "name": kind.lower(),
        "description": f"{kind} results (DICOM), one file per result",
        "required": False,
        "mount": OUTPUT_MOUNT,
        "path": kind,
    }


def _handlers(kinds: list[str], parent: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{kind.lower()}-resource",
            "accepts-command-output": kind.lower(),
            "as-a-child-of": parent,
            "type": "Resource",
            "label": kind,
            "format": "DICOM",
            "tags": ["radloop"],
        }
        for kind in kinds
    ]


def _session_wrapper(name: str, pipeline: Pipeline, kinds: list[str]) -> dict[str, Any]:
    return {
        "name": f"{name}-session",
        "label": f"radloop {pipeline.name}",
        "description": f"Run the radloop pipeline {pipeline.name} on the scans of a session it accepts",
        "contexts": ["xnat:imageSessionData"],
        "external-inputs": [
            {
                "name": "session",
                "description": "The session to run on",
                "type": "Session",
                "required": True,
                "provides-files-for-command-mount": INPUT_MOUNT,
                "load-children": True,
            }
        ],
        "derived-inputs": [],
        "output-handlers": _handlers(kinds, "session"),
    }


def _scan_wrapper(name: str, pipeline: Pipeline, kinds: list[str], resource: str) -> dict[str, Any]:
    return {
        "name": f"{name}-scan",
        "label": f"radloop {pipeline.name}",
        "description": f"Run the radloop pipeline {pipeline.name} on one scan",
        "contexts": ["xnat:imageScanData"],
        "external-inputs": [
            {
                "name": "scan",
                "description": "The scan to run on",
                "type": "Scan",
                "required": True,
                "matcher": f"'{resource}' in @.resources[*].label",
                "load-children": True,
            }
        ],
        "derived-inputs": [
            {
                "name": "scan-dicom",
                "description": f"The scan's {resource} resource",
                "type": "Resource",
                "derived-from-wrapper-input": "scan",
                "matcher": f"@.label == '{resource}'",
                "provides-files-for-command-mount": INPUT_MOUNT,
                "required": True,
            },
            {
                "name": "scan-id",
                "description": "The scan's ID",
                "type": "string",
                "derived-from-wrapper-input": "scan",
                "derived-from-xnat-object-property": "id",
                "provides-value-for-command-input": "scans",
                "user-settable": False,
                "required": True,
            },
        ],
        "output-handlers": _handlers(kinds, "scan"),
    }


def _resource_requests(pipeline: Pipeline, settings: XnatCommandSettings) -> dict[str, Any]:
    needs = pipeline.spec.resources
    out: dict[str, Any] = {}
    if needs.gpus:
        out["gpus"] = str(needs.gpus)
        out["generic-resources"] = {settings.gpu_resource_name: str(needs.gpus)}
    if needs.memory_mb:
        out["reserve-memory"] = needs.memory_mb
    return out


# ---------------------------------------------------------------------------- checks


def check_command(command: dict[str, Any]) -> list[str]:
    """The problems the Container Service would report when saving ``command`` (empty: none).

    Mirrors its ``Command.validate()``: names present, unique and made of ``[A-Za-z0-9_-]``; an
    image with a tag; outputs on known mounts; wrapper inputs of known types, derived from known
    inputs; output handlers accepting known outputs, as children of known inputs, with a label for
    resources; every output handled by every wrapper.
    """
    errors: list[str] = []
    name = command.get("name") or ""
    if not name:
        errors.append("command name cannot be blank")
    image = command.get("image") or ""
    if not image or ":" not in image.rsplit("/", 1)[-1]:
        errors.append(f"image {image!r} must name a tag, e.g. image:tag")
    if command.get("type", "docker") != "docker":
        errors.append(f"type {command.get('type')!r}: only docker commands are generated")
    mounts = _unique(errors, "mount", _names(command, "mounts"), check_chars=False)
    inputs = _unique(errors, "input", _names(command, "inputs"))
    outputs = _unique(errors, "output", _names(command, "outputs"))
    for output in command.get("outputs", []):
        if output.get("mount") not in mounts:
            errors.append(f"output {output.get('name')!r} references unknown mount {output.get('mount')!r}")
    _unique(errors, "wrapper", _names(command, "xnat"))
    for wrapper in command.get("xnat", []):
        problems = _check_wrapper(wrapper, mounts, inputs, outputs)
        errors.extend(f"wrapper {wrapper.get('name')!r}: {e}" for e in problems)
    return errors


def _names(command: dict[str, Any], key: str) -> list[str]:
    return [str(entry.get("name", "")) for entry in command.get(key, [])]


def _unique(errors: list[str], what: str, names: list[str], check_chars: bool = True) -> set[str]:
    seen: set[str] = set()
    for n in names:
        if not n:
            errors.append(f"{what} name cannot be blank")
        elif check_chars and not _NAME_OK.match(n):
            errors.append(f"{what} name {n!r} should contain only alphanumeric, _ and - characters")
        if n in seen:
            errors.append(f"{what} name {n!r} is not unique")
        seen.add(n)
    return seen


def _check_wrapper(
    wrapper: dict[str, Any], mounts: set[str], inputs: set[str], outputs: set[str]
) -> list[str]:
    errors: list[str] = []
    known: set[str] = set()
    for wi in wrapper.get("external-inputs", []) + wrapper.get("derived-inputs", []):
        errors.extend(_check_wrapper_input(wi, known, mounts, inputs))
        known.add(wi.get("name", ""))
    handled: set[str] = set()
    targets = set(known)
    for handler in wrapper.get("output-handlers", []):
        label = handler.get("name", "")
        accepts, parent = handler.get("accepts-command-output", ""), handler.get("as-a-child-of")
        if accepts not in outputs:
            errors.append(f"output handler {label!r} accepts unknown output {accepts!r}")
        handled.add(accepts)
        if parent not in targets:
            errors.append(f"output handler {label!r}: as-a-child-of {parent!r} is unknown")
        if handler.get("type", "Resource") not in OUTPUT_HANDLER_TYPES:
            errors.append(f"output handler {label!r}: unknown type {handler.get('type')!r}")
        if handler.get("type", "Resource") == "Resource" and not handler.get("label"):
            errors.append(f"output handler {label!r}: a Resource needs a label")
        targets.add(label)
    errors.extend(f"command output {o!r} has no output handler" for o in sorted(outputs - handled))
    return errors


def _check_wrapper_input(
    wi: dict[str, Any], known: set[str], mounts: set[str], inputs: set[str]
) -> list[str]:
    name = wi.get("name", "")
    errors = []
    if not name or not _NAME_OK.match(name):
        errors.append(f"input name {name!r} should contain only alphanumeric, _ and - characters")
    if name in known:
        errors.append(f"input name {name!r} is not unique")
    if wi.get("type", "string") not in WRAPPER_INPUT_TYPES:
        errors.append(f"input {name!r}: unknown type {wi.get('type')!r}")
    mount = wi.get("provides-files-for-command-mount")
    if mount is not None and mount not in mounts:
        errors.append(f"input {name!r} provides files for unknown mount {mount!r}")
    target = wi.get("provides-value-for-command-input")
    if target is not None and target not in inputs:
        errors.append(f"input {name!r} provides a value for unknown command input {target!r}")
    parent = wi.get("derived-from-wrapper-input")
    if "derived-from-wrapper-input" in wi and (parent == name or parent not in known):
        errors.append(f"derived input {name!r} is derived from unknown input {parent!r}")
    if wi.get("multiple") and (mount is not None or target is None):
        errors.append(f"derived input {name!r} is 'multiple': it must provide a value and no files")
    return errors
