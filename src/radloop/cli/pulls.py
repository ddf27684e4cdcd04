"""``radloop pull`` and ``radloop pulls …``: studies retrieved from PACS sources, and polling."""

from __future__ import annotations

from typing import Annotated

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import console, emit, table, write_json
from radloop.core.errors import RadloopError
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings
from radloop.runtime import Runtime

app = typer.Typer(help="Studies pulled from PACS sources, and polling.", no_args_is_help=True)

PULLED_COLUMNS = [
    "source",
    "study_instance_uid",
    "accession_number",
    "state",
    "instances",
    "failed_instances",
    "error",
]
PULLS_COLUMNS = [
    "id",
    "source",
    "study_instance_uid",
    "trigger",
    "state",
    "retrievals",
    "instances",
    "retrieved_at",
    "error",
]


def pull(
    source: Annotated[str | None, typer.Option(help="Pull source (default: the only one).")] = None,
    accession: Annotated[str, typer.Option("--accession", help="AccessionNumber of the study.")] = "",
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID of the study.")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve a study from a PACS now (by --accession or --study); it is routed like a pushed one.

    With a C-MOVE source, the PACS sends the study to ``radloop serve``'s DICOM port, which must be running.
    """
    settings = options.settings(config)
    configure_logging("WARNING")
    name = source or _only_source(settings)
    runtime = Runtime.build(settings, migrate=True)
    rows = services.pull_study(runtime.puller, name, accession, study)
    emit(rows, as_json, PULLED_COLUMNS, "Pulled")
    if any(r.state != "done" for r in rows):
        raise typer.Exit(1)


def _only_source(settings: Settings) -> str:
    if len(settings.sources) != 1:
        names = [s.name for s in settings.sources]
        raise RadloopError(f"name the source with --source (configured: {names})")
    return settings.sources[0].name


@app.command("list")
def pulls_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    source: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> None:
    """Studies found on pull sources: state, retrievals, instances."""
    rows = services.list_pulls(options.runtime(config, migrate=False).engine, source, state, limit)
    emit(rows, as_json, PULLS_COLUMNS, "Pulls")


@app.command("poll")
def pulls_poll(
    source: Annotated[str, typer.Argument(help="Pull source name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Poll a source once now, as ``radloop serve`` does on schedule (new studies only)."""
    settings = options.settings(config)
    configure_logging("WARNING")
    report = services.poll_source(Runtime.build(settings, migrate=True).puller, source)
    if as_json:
        write_json(report)
        return
    retrieved = len(report.retrieved)
    console.print(f"{report.found} found, {report.skipped} already pulled, {retrieved} retrieved")


@app.command("sources")
def pulls_sources(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Configured pull sources and where their polling stands."""
    runtime = options.runtime(config, migrate=False)
    rows = services.list_sources(runtime.settings, runtime.engine)
    if as_json:
        write_json(rows)
        return
    flat = [
        {
            **r.model_dump(mode="json"),
            "poll": "on" if r.poll.enabled else "off",
            "since": r.cursor.since_date if r.cursor else "",
            "polls": r.cursor.polls if r.cursor else 0,
        }
        for r in rows
    ]
    columns = ["name", "kind", "address", "listener_ae_title", "retrieve", "poll", "polls", "since"]
    table(flat, columns, "Sources")
