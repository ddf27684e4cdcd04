"""``radloop export …``: training datasets from reviewed results (argument parsing and output only).

The work is :func:`radloop.training_export.export_dataset`.
"""

from __future__ import annotations

import getpass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.cli.output import console, err_console, write_json
from radloop.core.errors import ConfigError
from radloop.core.models import ReviewDecision
from radloop.runtime import Runtime
from radloop.training_export import ExportFormat, ExportRequest, ExportSummary, export_dataset
from radloop.training_export.cases import DEFAULT_DECISIONS

app = typer.Typer(
    help="Training datasets from reviewed results (MONAI, MSD, nnU-Net v2).", no_args_is_help=True
)


def parse_decisions(text: str) -> frozenset[ReviewDecision]:
    """``accepted,edited`` → the decisions; :class:`ConfigError` naming a word that is none."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    known = ", ".join(d.value for d in ReviewDecision)
    try:
        decisions = frozenset(ReviewDecision(w) for w in words)
    except ValueError as e:
        raise ConfigError(f"--decisions {text!r}: each must be one of {known}") from e
    if not decisions:
        raise ConfigError(f"--decisions must name at least one of {known}")
    return decisions


def parse_since(text: str | None) -> datetime | None:
    """``2026-03-01`` (midnight UTC) or an ISO date-time (UTC unless it says otherwise)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text) if "T" in text or " " in text else None
        moment = moment or datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError as e:
        raise ConfigError(f"--since {text!r} is not a date (YYYY-MM-DD) or an ISO date-time") from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command("dataset")
def export_dataset_command(
    pipeline: Annotated[str, typer.Option("--pipeline", help="Pipeline whose reviewed results to export.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="monai (datalist), msd or nnunet (v2 raw).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder (nnunet: the nnUNet_raw folder).")],
    decisions: Annotated[str, typer.Option(help="Decisions to export, comma-separated.")] = ",".join(
        sorted(d.value for d in DEFAULT_DECISIONS)
    ),
    since: Annotated[str | None, typer.Option(help="Only decisions made on or after this date, UTC.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of patients for validation, in [0, 1).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the patient split (same seed, same split).")] = 0,
    dataset_id: Annotated[int, typer.Option(help="nnU-Net dataset number (Dataset<NNN>_<name>).")] = 500,
    name: Annotated[str, typer.Option(help="Dataset name; default: from the pipeline name.")] = "",
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Export reviewed results as a training dataset; run again to add what was reviewed since."""
    settings = options.settings(config)
    try:
        request = ExportRequest(
            pipeline=pipeline,
            out_dir=out,
            format=fmt,
            decisions=parse_decisions(decisions),
            since=parse_since(since),
            val_fraction=val_fraction,
            seed=seed,
            dataset_name=name,
            dataset_id=dataset_id,
            requested_by=getpass.getuser(),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    runtime = Runtime.build(settings, migrate=True)  # the export records what it wrote
    columns = (
        TextColumn("exporting cases"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=as_json) as progress:
        task: list[TaskID] = []

        def on_progress(done: int, total: int) -> None:
            if not task:
                task.append(progress.add_task("export", total=total))
            progress.update(task[0], completed=done)

        summary = export_dataset(settings, runtime.engine, request, on_progress)
    if as_json:
        write_json(summary.to_dict())
    else:
        print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


def print_summary(summary: ExportSummary) -> None:
    """Cases per side and decision, patients per side; then what this run did, and failures."""
    decisions = [d.value for d in ReviewDecision]
    table = Table(title=f"{summary.format.value} dataset at {summary.dataset_root}")
    for column in ("split", "patients", *decisions, "cases"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for side, counts in summary.cases.items():
        table.add_row(
            side, str(summary.patients[side]), *(str(counts[d]) for d in decisions), str(sum(counts.values()))
        )
    totals = [sum(c[d] for c in summary.cases.values()) for d in decisions]
    patients = str(sum(summary.patients.values()))
    table.add_row("total", patients, *map(str, totals), str(sum(totals)), style="bold")
    console.print(table)
    console.print(
        f"this run: {summary.new} new, {summary.updated} updated, {summary.unchanged} unchanged, "
        f"{summary.removed} removed, {len(summary.failed)} failed"
    )
    for case_id, error in summary.failed:
        console.print(f"[red]failed[/red] {case_id}: {error}")
