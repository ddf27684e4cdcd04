"""``radloop config …``: the effective settings."""

from __future__ import annotations

import sys

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt

app = typer.Typer(help="Settings.", no_args_is_help=True)


@app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings (file + environment + defaults) as YAML; secrets masked."""
    import yaml

    data = options.settings(config).model_dump(mode="json")
    data["secret_key"] = "***"
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
