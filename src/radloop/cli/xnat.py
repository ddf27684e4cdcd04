"""``radloop xnat …``: XNAT Container Service commands and the project watcher."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.cli.output import err_console, write_json
from radloop.core.errors import ConfigError
from radloop.core.logging import configure_logging
from radloop.core.settings import XnatCommandSettings

app = typer.Typer(help="XNAT: Container Service commands and the project watcher.", no_args_is_help=True)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n")
        err_console.print(f"wrote {output}")


@app.command("command")
def xnat_command(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (see `radloop pipelines list`).")],
    config: ConfigOpt = None,
    image: Annotated[str | None, typer.Option(help="Image with tag; default: xnat.command.image.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not to stdout.")] = None,
    as_label: Annotated[
        bool,
        typer.Option("--label", help="Print the compact JSON list for the image label org.nrg.commands."),
    ] = False,
) -> None:
    """Print the XNAT Container Service command (JSON) that runs PIPELINE from XNAT."""
    from radloop.xnat_plugin.command import build_command, check_command

    runtime = options.runtime(config, migrate=False)
    settings = runtime.settings
    command_options = settings.xnat.command
    if image is not None:
        try:
            command_options = XnatCommandSettings(
                image=image, gpu_resource_name=command_options.gpu_resource_name
            )
        except ValidationError as e:
            raise ConfigError(f"--image: {e.errors()[0]['msg']}") from e
    pipe = runtime.catalog.get(pipeline)
    command = build_command(pipe, command_options, settings.xnat.watch.scan_resource)
    problems = check_command(command)
    if problems:
        raise ConfigError("the generated command would be refused by XNAT: " + "; ".join(problems))
    text = json.dumps([command], separators=(",", ":")) if as_label else json.dumps(command, indent=2)
    _write(text, output)


@app.command("watch")
def xnat_watch(
    project: Annotated[str, typer.Argument(help="XNAT project ID to watch.")],
    config: ConfigOpt = None,
    pipeline: Annotated[
        list[str] | None,
        typer.Option("--pipeline", "-p", help="Pipeline to run (repeatable); default: xnat.watch.pipelines."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit (cron, tests).")] = False,
) -> None:
    """Run the configured pipelines on every new session of PROJECT and store the results on it."""
    from radloop.xnat_plugin.watcher import ProjectWatcher

    runtime = options.runtime(config, migrate=False)
    settings = runtime.settings
    configure_logging(settings.log_level)
    watcher = ProjectWatcher(settings, project, runtime.catalog, pipeline or None)
    if once:
        report = watcher.poll_once()
        write_json({"handled": report.handled, "results": report.results})
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err_console.print(f"watching XNAT project {project} every {settings.xnat.watch.interval_s:g} s")
    watcher.run(stop)
