"""``radloop pipelines …``: pipeline files (read-only; neither command opens the database)."""

from __future__ import annotations

from pathlib import Path

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import emit, table, write_json

app = typer.Typer(help="Pipeline files.", no_args_is_help=True)


@app.command("list")
def pipelines_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Loaded pipelines (reference ones and the configured folders), all validated."""
    rows = services.list_pipelines(options.runtime(config, migrate=False).catalog)
    if as_json:
        write_json(rows)
        return
    flat = [
        {
            **r.model_dump(mode="json"),
            "operators": " → ".join(o.id for o in r.operators),
            "destinations": ", ".join(r.destinations),
        }
        for r in rows
    ]
    table(flat, ["name", "version", "operators", "destinations", "file"], "Pipelines")


@app.command("validate")
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
    emit(row, as_json, ["file", "name", "version", "valid", "order"], "Valid")
