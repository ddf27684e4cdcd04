"""``radloop config …``: the effective settings."""

from __future__ import annotations

import sys

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt

app = typer.Typer(help="Settings.", no_args_is_help=True)


@app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings (file + environment + defaults) as YAML; secrets masked.

    Masked by type, wherever they sit: every secret field (keys, passwords, tokens, header
    values) and the password of any URL with user info (``database.url`` and the like).
    """
    import yaml

    from radloop.core.settings import redacted

    data = redacted(options.settings(config))
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
