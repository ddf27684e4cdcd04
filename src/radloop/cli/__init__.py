"""The ``radloop`` command (Typer): argument parsing and calls into services; no business logic here.

One module per command group (``jobs``, ``pipelines``, ``models``…) or single command (``serve``,
``send``…); they share :mod:`~radloop.cli.options` (``--config``, ``--json``, the runtime) and
:mod:`~radloop.cli.output` (the console, tables, JSON). Commands that only read build their
runtime with ``migrate=False`` and never change the database schema.
"""

from __future__ import annotations

import sys

import typer

from radloop.cli import (
    audit,
    config,
    db,
    deliveries,
    export,
    jobs,
    models,
    pipelines,
    pulls,
    review,
    run_pipeline,
    send,
    serve,
    studies,
    tokens,
    train,
    triton,
    xnat,
)
from radloop.core.errors import RadloopError

app = typer.Typer(
    help="radloop: medical-imaging AI in the clinical loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for group, name in [
    (studies.app, "studies"),
    (jobs.app, "jobs"),
    (pipelines.app, "pipelines"),
    (deliveries.app, "deliveries"),
    (config.app, "config"),
    (db.app, "db"),
    (tokens.app, "tokens"),
    (pulls.app, "pulls"),
    (models.app, "models"),
    (triton.app, "triton"),
    (xnat.app, "xnat"),
    (export.app, "export"),
    (audit.app, "audit"),
]:
    app.add_typer(group, name=name)
app.command("run-pipeline")(run_pipeline.run_pipeline)
app.command("serve")(serve.serve)
app.command("worker")(serve.worker)
app.command("health")(serve.health)
app.command("send")(send.send)
app.command("pull")(pulls.pull)
app.command("review-url")(review.review_url)
app.command("train")(train.train)


def main() -> None:
    """Console entry point: radloop errors become a one-line message and exit status 2."""
    try:
        app()
    except RadloopError as e:
        sys.stderr.write(f"error: {e}\n")  # one unwrapped line: scripts and people grep it
        raise SystemExit(2) from e


__all__ = ["app", "main"]
