"""The options every command shares, and how a command gets its settings and its runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radloop.core.settings import Settings, load_settings
from radloop.runtime import Runtime

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $RADLOOP_CONFIG).", envvar="RADLOOP_CONFIG"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def settings(config: Path | None) -> Settings:
    """The settings of ``--config`` (else ``$RADLOOP_CONFIG``), the environment and the defaults."""
    return load_settings(config)


def runtime(config: Path | None, *, migrate: bool) -> Runtime:
    """The runtime for ``--config``: ``migrate=True`` for commands that write, ``False`` for those that read.

    A read-only command never migrates; on a database that is missing or behind, it stops with a
    one-line error saying to run ``radloop db upgrade`` or ``radloop serve`` first.
    """
    return Runtime.build(load_settings(config), migrate=migrate)
