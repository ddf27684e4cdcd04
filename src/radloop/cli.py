"""The ``radloop`` command: argument parsing and calls into services; no business logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from radloop import services
from radloop.cli_export import export_app
from radloop.cli_models import models_app, triton_app
from radloop.cli_xnat import run_pipeline, xnat_app
from radloop.core import db
from radloop.core.errors import RadloopError
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings, load_settings

app = typer.Typer(
    help="radloop: medical-imaging AI in the clinical loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
studies_app = typer.Typer(help="Received studies and series.", no_args_is_help=True)
jobs_app = typer.Typer(help="Pipeline jobs.", no_args_is_help=True)
pipelines_app = typer.Typer(help="Pipeline files.", no_args_is_help=True)
deliveries_app = typer.Typer(help="The outbox: results × destinations.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (machine access to the HTTP API).", no_args_is_help=True)
pulls_app = typer.Typer(help="Studies pulled from PACS sources, and polling.", no_args_is_help=True)
for sub, name in [
    (studies_app, "studies"),
    (jobs_app, "jobs"),
    (pipelines_app, "pipelines"),
    (deliveries_app, "deliveries"),
    (config_app, "config"),
    (db_app, "db"),
    (tokens_app, "tokens"),
    (pulls_app, "pulls"),
]:
    app.add_typer(sub, name=name)
app.add_typer(models_app, name="models")
app.add_typer(triton_app, name="triton")
app.add_typer(xnat_app, name="xnat")
app.add_typer(export_app, name="export")
app.command("run-pipeline")(run_pipeline)

console = Console()
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $RADLOOP_CONFIG).", envvar="RADLOOP_CONFIG"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def _engine(settings: Settings) -> Any:
    db.upgrade(settings)
    return db.make_engine(settings)


def _plain(data: Any) -> Any:
    """Read models (and lists of them) as JSON-ready data: ISO datetimes, enum values."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_plain(x) for x in data]
    return data


def _table(rows: list[Any], columns: list[str], title: str) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in _plain(rows):
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    console.print(table)


def _emit(rows: Any, as_json: bool, columns: list[str], title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(_plain(rows), indent=2, default=str) + "\n")
    else:
        _table(rows if isinstance(rows, list) else [rows], columns, title)


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run radloop: DICOM SCP, assembler, local workers and outbox (embedded defaults: SQLite)."""
    from radloop.server import serve as run_server

    settings = _settings(config)
    configure_logging(settings.log_level)
    run_server(settings)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.dcm, .dcm.gz, any DICOM file).")],
    host: Annotated[str, typer.Option(help="Peer host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Peer port.")] = 11112,
    called_ae: Annotated[str, typer.Option("--called-ae", help="Peer's AE title.")] = "RADLOOP",
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title.")] = "RADLOOP_SEND",
) -> None:
    """Send DICOM files to a peer by C-STORE, with a progress bar."""
    from radloop.connector.dimse.scu import iter_dicom_files, send_files

    files = iter_dicom_files(paths)
    if not files:
        raise RadloopError("no files to send")
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("send", total=len(files))
        report = send_files(
            files, host, port, called_ae, calling_ae, on_progress=lambda _p, _ok: progress.advance(task)
        )
    for path, why in report.failed:
        console.print(f"[red]failed[/red] {path}: {why}")
    console.print(f"{len(report.sent)} sent, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)


@studies_app.command("list")
def studies_list(config: ConfigOpt = None, as_json: JsonOpt = False, limit: int = 100) -> None:
    """Studies and their series: state, instances, routing outcome."""
    rows = services.list_studies(_engine(_settings(config)), limit)
    if as_json:
        _emit(rows, True, [], "")
        return
    flat = [
        {
            "study": st.study_instance_uid,
            "series": se.series_instance_uid,
            "modality": se.modality,
            "instances": se.instance_count,
            "state": se.state.value,
            "routing": se.routing_status.value,
            "note": se.routing_note,
        }
        for st in rows
        for se in st.series
    ]
    _table(flat, ["study", "series", "modality", "instances", "state", "routing", "note"], "Studies")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    state: str | None = None,
    pipeline: str | None = None,
    limit: int = 100,
) -> None:
    """Jobs, newest first."""
    rows = services.list_jobs(_engine(_settings(config)), state, pipeline, limit)
    _emit(rows, as_json, ["id", "pipeline", "state", "priority", "attempts", "created_at", "error"], "Jobs")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One job: state, error, per-operator timings and logs, results."""
    job = services.get_job(_engine(_settings(config)), job_id)
    if as_json:
        _emit(job, True, [], "")
        return
    _table([job], ["id", "pipeline", "state", "attempts", "max_attempts", "error"], f"Job {job_id}")
    _table(job.steps, ["attempt", "operator_id", "operator", "state", "duration_s", "error"], "Steps")
    _table(job.results, ["kind", "sop_instance_uid", "series_instance_uid"], "Results")


@jobs_app.command("retry")
def jobs_retry(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Re-queue a failed, cancelled or succeeded job."""
    settings = _settings(config)
    row = services.retry_job(_engine(settings), job_id, settings.workers.max_attempts)
    _emit(row, as_json, ["id", "pipeline", "state", "attempts", "max_attempts"], "Re-queued")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued or running job."""
    row = services.cancel_job(_engine(_settings(config)), job_id)
    _emit(row, as_json, ["id", "pipeline", "state"], "Cancelled")


@pipelines_app.command("list")
def pipelines_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Loaded pipelines (reference ones and the configured folders), all validated."""
    from radloop.pipelines.catalog import PipelineCatalog
    from radloop.pipelines.operators import builtin_registry

    rows = services.list_pipelines(PipelineCatalog.load(_settings(config), builtin_registry()))
    if as_json:
        _emit(rows, True, [], "")
        return
    flat = [
        {
            **r.model_dump(mode="json"),
            "operators": " → ".join(o.id for o in r.operators),
            "destinations": ", ".join(r.destinations),
        }
        for r in rows
    ]
    _table(flat, ["name", "version", "operators", "destinations", "file"], "Pipelines")


@pipelines_app.command("validate")
def pipelines_validate(file: Path, as_json: JsonOpt = False) -> None:
    """Validate one pipeline file (operators, options, wiring, types, cycles)."""
    from radloop.pipelines.operators import builtin_registry
    from radloop.pipelines.spec import load_pipeline

    p = load_pipeline(file, builtin_registry())
    row = {
        "file": str(file),
        "name": p.name,
        "version": p.spec.version,
        "valid": True,
        "order": [s.step.id for s in p.steps],
    }
    _emit(row, as_json, ["file", "name", "version", "valid", "order"], "Valid")


@deliveries_app.command("list")
def deliveries_list(config: ConfigOpt = None, as_json: JsonOpt = False, state: str | None = None) -> None:
    """Outbox rows with their attempts and last error."""
    rows = services.list_deliveries(_engine(_settings(config)), state)
    _emit(
        rows,
        as_json,
        ["id", "kind", "destination", "state", "attempts", "next_attempt_at", "last_error"],
        "Deliveries",
    )


@deliveries_app.command("retry")
def deliveries_retry(delivery_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Send a failed or dismissed delivery again now."""
    row = services.retry_delivery(_engine(_settings(config)), delivery_id)
    _emit(row, as_json, ["id", "destination", "state"], "Retrying")


@deliveries_app.command("dismiss")
def deliveries_dismiss(delivery_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Stop retrying a delivery."""
    row = services.dismiss_delivery(_engine(_settings(config)), delivery_id)
    _emit(row, as_json, ["id", "destination", "state"], "Dismissed")


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings (file + environment + defaults) as YAML; secrets masked."""
    import yaml

    data = _settings(config).model_dump(mode="json")
    data["secret_key"] = "***"
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply database migrations (serve does this at start too)."""
    settings = _settings(config)
    db.upgrade(settings)
    console.print(f"database at {settings.database_url.split('@')[-1]} is up to date")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who the token is for, e.g. 'pacs-router'.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    row = services.create_token(_engine(_settings(config)), name)
    if as_json:
        _emit(row, True, [], "")
        return
    console.print(f"token {row.name!r} (id {row.id}) created; it is shown only now:")
    sys.stdout.write(row.token + "\n")


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """API tokens, active and revoked (never the tokens themselves)."""
    rows = services.list_tokens(_engine(_settings(config)))
    columns = ["id", "name", "prefix", "active", "created_at", "last_used_at", "revoked_at"]
    _emit(rows, as_json, columns, "Tokens")


@tokens_app.command("revoke")
def tokens_revoke(
    name_or_id: Annotated[str, typer.Argument(help="Token name or id.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an active token: requests carrying it get 401 from now on."""
    row = services.revoke_token(_engine(_settings(config)), name_or_id)
    _emit(row, as_json, ["id", "name", "revoked_at"], "Revoked")


@app.command()
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
    settings = _settings(config)
    configure_logging("WARNING")
    name = source or _only_source(settings)
    engine = _engine(settings)
    rows = services.pull_study(services.build_puller(settings, engine), name, accession, study)
    _emit(
        rows,
        as_json,
        [
            "source",
            "study_instance_uid",
            "accession_number",
            "state",
            "instances",
            "failed_instances",
            "error",
        ],
        "Pulled",
    )
    if any(r.state != "done" for r in rows):
        raise typer.Exit(1)


def _only_source(settings: Settings) -> str:
    if len(settings.sources) != 1:
        names = [s.name for s in settings.sources]
        raise RadloopError(f"name the source with --source (configured: {names})")
    return settings.sources[0].name


@pulls_app.command("list")
def pulls_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    source: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> None:
    """Studies found on pull sources: state, retrievals, instances."""
    rows = services.list_pulls(_engine(_settings(config)), source, state, limit)
    _emit(
        rows,
        as_json,
        [
            "id",
            "source",
            "study_instance_uid",
            "trigger",
            "state",
            "retrievals",
            "instances",
            "retrieved_at",
            "error",
        ],
        "Pulls",
    )


@pulls_app.command("poll")
def pulls_poll(
    source: Annotated[str, typer.Argument(help="Pull source name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Poll a source once now, as ``radloop serve`` does on schedule (new studies only)."""
    settings = _settings(config)
    configure_logging("WARNING")
    report = services.poll_source(services.build_puller(settings, _engine(settings)), source)
    if as_json:
        _emit(report, True, [], "")
        return
    retrieved = len(report.retrieved)
    console.print(f"{report.found} found, {report.skipped} already pulled, {retrieved} retrieved")


@pulls_app.command("sources")
def pulls_sources(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Configured pull sources and where their polling stands."""
    settings = _settings(config)
    rows = services.list_sources(settings, _engine(settings))
    if as_json:
        _emit(rows, True, [], "")
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
    _table(flat, columns, "Sources")


@app.command("review-url")
def review_url(
    study: Annotated[
        str | None,
        typer.Argument(
            help="StudyInstanceUID or AccessionNumber of the study to review; omit for a worklist link."
        ),
    ] = None,
    reviewer: Annotated[str, typer.Option(help="Who reviews (the PACS user ID).")] = "",
    result: Annotated[
        str,
        typer.Option(
            help="SeriesInstanceUID or SOPInstanceUID of the SEG; default: the study's newest AI SEG."
        ),
    ] = "",
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds the link stays valid (default: review.link_ttl_s).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a signed, expiring launch URL for the review app (what a PACS launch button opens)."""
    from radloop.core.refs import is_valid_uid
    from radloop.viewer_launch.signing import launch_url

    if not reviewer.strip():
        raise RadloopError("--reviewer is required: the launch URL names who reviews")
    settings = _settings(config)
    named = study or ""
    by_uid = is_valid_uid(named)
    url = launch_url(
        settings,
        reviewer=reviewer.strip(),
        study=named if by_uid else "",
        accession="" if by_uid else named,
        result=result,
        ttl_s=ttl if ttl is not None else settings.review.link_ttl_s,
    )
    sys.stdout.write(url + "\n")


def main() -> None:
    """Console entry point: radloop errors become a one-line message and exit status 2."""
    try:
        app()
    except RadloopError as e:
        sys.stderr.write(f"error: {e}\n")  # one unwrapped line: scripts and people grep it
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
