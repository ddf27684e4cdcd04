"""``radloop deliveries …``: the outbox (list reads; retry and dismiss write)."""

from __future__ import annotations

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import emit

app = typer.Typer(help="The outbox: results × destinations.", no_args_is_help=True)


@app.command("list")
def deliveries_list(config: ConfigOpt = None, as_json: JsonOpt = False, state: str | None = None) -> None:
    """Outbox rows with their attempts and last error."""
    rows = services.list_deliveries(options.runtime(config, migrate=False).engine, state)
    columns = ["id", "kind", "destination", "state", "attempts", "next_attempt_at", "last_error"]
    emit(rows, as_json, columns, "Deliveries")


@app.command("retry")
def deliveries_retry(delivery_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Send a failed or dismissed delivery again now."""
    row = services.retry_delivery(options.runtime(config, migrate=True).engine, delivery_id)
    emit(row, as_json, ["id", "destination", "state"], "Retrying")


@app.command("dismiss")
def deliveries_dismiss(delivery_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Stop retrying a delivery."""
    row = services.dismiss_delivery(options.runtime(config, migrate=True).engine, delivery_id)
    emit(row, as_json, ["id", "destination", "state"], "Dismissed")
