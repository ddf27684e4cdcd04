"""``radloop audit …``: the IHE ATNA audit trail (DICOM audit messages) kept in the database."""

from __future__ import annotations

from typing import Annotated

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.export import parse_since
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import emit

app = typer.Typer(help="The audit trail (DICOM audit messages, IHE ATNA).", no_args_is_help=True)


@app.command("list")
def audit_list(
    since: Annotated[
        str | None, typer.Option(help="Only messages at or after this date (UTC, YYYY-MM-DD).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Only messages this user requested (e.g. token:NAME).")
    ] = None,
    patient: Annotated[str | None, typer.Option(help="Only messages naming this PatientID.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many, newest first.")] = 200,
    xml: Annotated[bool, typer.Option("--xml", help="Include each message's XML (with --json).")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Audit messages, newest first, with whether each has reached the audit repository."""
    rows = services.list_audit_messages(
        options.runtime(config, migrate=False).engine,
        since=parse_since(since),
        user=user,
        patient=patient,
        limit=limit,
        with_xml=xml,
    )
    columns = ["id", "at", "event_id", "outcome", "user", "patient_id", "pending"]
    emit(rows, as_json, columns, "Audit messages (--json for every column)")
