"""``radloop serve``: the whole system in one process group."""

from __future__ import annotations

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.core.logging import configure_logging


def serve(config: ConfigOpt = None) -> None:
    """Run radloop: DICOM SCP, assembler, local workers and outbox (embedded defaults: SQLite)."""
    from radloop.server import serve as run_server

    settings = options.settings(config)
    configure_logging(settings.log_level)
    run_server(settings)
