"""``radloop db …``: the database schema."""

from __future__ import annotations

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.cli.output import console

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply database migrations (serve does this at start too)."""
    settings = options.runtime(config, migrate=True).settings
    console.print(f"database at {settings.database_url.split('@')[-1]} is up to date")
