"""``radloop studies …``: received studies and series (read-only)."""

from __future__ import annotations

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import table, write_json

app = typer.Typer(help="Received studies and series.", no_args_is_help=True)


@app.command("list")
def studies_list(config: ConfigOpt = None, as_json: JsonOpt = False, limit: int = 100) -> None:
    """Studies and their series: state, instances, routing outcome."""
    rows = services.list_studies(options.runtime(config, migrate=False).engine, limit)
    if as_json:
        write_json(rows)
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
    table(flat, ["study", "series", "modality", "instances", "state", "routing", "note"], "Studies")
