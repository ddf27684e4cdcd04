"""``radloop xnat …`` and ``radloop run-pipeline``: argument parsing and calls, nothing more.

Kept apart from :mod:`radloop.cli` (which mounts them) so that the XNAT commands can change
without touching the main command file.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from radloop.core.errors import ConfigError
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings, XnatCommandSettings, load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry

xnat_app = typer.Typer(help="XNAT: Container Service commands and the project watcher.", no_args_is_help=True)

console = Console(stderr=True)
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $RADLOOP_CONFIG).", envvar="RADLOOP_CONFIG"),
]


def _catalog(settings: Settings) -> PipelineCatalog:
    return PipelineCatalog.load(settings, builtin_registry())


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n")
        console.print(f"wrote {output}")


@xnat_app.command("command")
def xnat_command(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (see `radloop pipelines list`).")],
    config: ConfigOpt = None,
    image: Annotated[str | None, typer.Option(help="Image with tag; default: xnat.command.image.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not to stdout.")] = None,
    as_label: Annotated[bool, typer.Option(
        "--label", help="Print the compact JSON list for the image label org.nrg.commands.")] = False,
) -> None:
    """Print the XNAT Container Service command (JSON) that runs PIPELINE from XNAT."""
    from radloop.xnat_plugin.command import build_command, check_command

    settings = load_settings(config)
    options = settings.xnat.command
    if image is not None:
        try:
            options = XnatCommandSettings(image=image, gpu_resource_name=options.gpu_resource_name)
        except ValidationError as e:
            raise ConfigError(f"--image: {e.errors()[0]['msg']}") from e
    command = build_command(_catalog(settings).get(pipeline), options, settings.xnat.watch.scan_resource)
    problems = check_command(command)
    if problems:
        raise ConfigError("the generated command would be refused by XNAT: " + "; ".join(problems))
    text = json.dumps([command], separators=(",", ":")) if as_label else json.dumps(command, indent=2)
    _write(text, output)


@xnat_app.command("watch")
def xnat_watch(
    project: Annotated[str, typer.Argument(help="XNAT project ID to watch.")],
    config: ConfigOpt = None,
    pipeline: Annotated[list[str] | None, typer.Option(
        "--pipeline", "-p", help="Pipeline to run (repeatable); default: xnat.watch.pipelines.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit (cron, tests).")] = False,
) -> None:
    """Run the configured pipelines on every new session of PROJECT and store the results on it."""
    from radloop.xnat_plugin.watcher import ProjectWatcher

    settings = load_settings(config)
    configure_logging(settings.log_level)
    watcher = ProjectWatcher(settings, project, _catalog(settings), pipeline or None)
    if once:
        report = watcher.poll_once()
        sys.stdout.write(json.dumps({"handled": report.handled, "results": report.results}, indent=2) + "\n")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"watching XNAT project {project} every {settings.xnat.watch.interval_s:g} s")
    watcher.run(stop)


def run_pipeline(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    input_dir: Annotated[Path, typer.Option("--input", help="DICOM folder (an XNAT session or scan mount).")],
    output_dir: Annotated[Path, typer.Option("--output", help="Results: OUTPUT/<KIND>/<SOP UID>.dcm.")],
    scans: Annotated[str, typer.Option(help="Scan IDs to run on, comma-separated; empty = all.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Run a pipeline on a folder of DICOM files, without a server (the XNAT container's entrypoint)."""
    from radloop.inference.resolve import ModelResolver
    from radloop.xnat_plugin.run_pipeline import run_on_folder

    settings = load_settings(config)
    configure_logging(settings.log_level)
    pipeline = _catalog(settings).get(name)
    run = run_on_folder(pipeline, input_dir, output_dir, scans.split(","),
                        models=ModelResolver.from_settings(settings))
    summary: dict[str, Any] = {
        "pipeline": name,
        "ran_on": [m.describe() for m in run.ran],
        "skipped": run.skipped,
        "outputs": [str(p) for p in run.outputs],
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
