"""``radloop serve`` (the whole system, or one ``--role``), ``radloop worker`` and ``radloop health``."""

from __future__ import annotations

from typing import Annotated

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings

RoleOpt = Annotated[
    str,
    typer.Option(
        "--role", help="all (default: everything in one process group), ingest, api, outbox or worker."
    ),
]


def serve(config: ConfigOpt = None, role: RoleOpt = "all") -> None:
    """Run radloop: DICOM SCP, assembler, local workers and outbox (embedded defaults: SQLite)."""
    from radloop.node_roles import parse_role
    from radloop.server import serve as run_server

    chosen = parse_role(role)
    settings = options.settings(config)
    configure_logging(settings.log_level)
    run_server(settings, role=chosen)


def worker(
    config: ConfigOpt = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues, e.g. gpu,cpu.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Pipeline processes.")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name in leases and `jobs show`.")] = None,
) -> None:
    """The worker role: run pipeline jobs (`serve --role worker`, with queue and process options)."""
    from radloop.server import serve as run_server

    settings = _with_worker_options(options.settings(config), queues, concurrency, name)
    configure_logging(settings.log_level)
    run_server(settings, role="worker")


def health(
    config: ConfigOpt = None,
    role: RoleOpt = "all",
    name: Annotated[str | None, typer.Option(help="Worker name, as given to `radloop worker`.")] = None,
) -> None:
    """Check a role on this host (database, broker, its port, its heartbeat); exit 1 if anything fails."""
    from radloop.node_roles import health as check
    from radloop.node_roles import parse_role

    chosen = parse_role(role)
    settings = _with_worker_options(options.settings(config), None, None, name)
    failed = False
    for what, problem in check(settings, chosen):
        typer.echo(
            f"{'ok  ' if problem is None else 'FAIL'} {what}{'' if problem is None else ': ' + problem}"
        )
        failed = failed or problem is not None
    raise typer.Exit(1 if failed else 0)


def _with_worker_options(
    settings: Settings, queues: str | None, concurrency: int | None, name: str | None
) -> Settings:
    update: dict[str, object] = {}
    if queues is not None:
        update["queues"] = [q.strip() for q in queues.split(",") if q.strip()]
    if concurrency is not None:
        update["processes"] = concurrency
    if name is not None:
        update["name"] = name
    if not update:
        return settings
    workers = settings.workers.model_copy(update=update)
    return settings.model_copy(update={"workers": workers})
