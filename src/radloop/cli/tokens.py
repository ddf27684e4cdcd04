"""``radloop tokens …``: API tokens (list reads; create and revoke write)."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import console, emit, write_json
from radloop.core.roles import DEFAULT_TOKEN_ROLES

app = typer.Typer(help="API tokens (machine access to the HTTP API).", no_args_is_help=True)


@app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who the token is for, e.g. 'pacs-router'.")],
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="A role the token holds (repeat for several): viewer, radiologist, data-steward, "
            "operator, admin. Default: viewer (read-only).",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token holding roles and print it once (only its hash is stored)."""
    roles = role or list(DEFAULT_TOKEN_ROLES)
    runtime = options.runtime(config, migrate=True)
    row = services.create_token(runtime.engine, name, roles)
    services.record_security_change(
        runtime.settings,
        runtime.engine,
        getpass.getuser(),
        f"token:{row.name}",
        f"created with roles {row.roles}",
    )
    if as_json:
        write_json(row)
        return
    console.print(f"token {row.name!r} (id {row.id}, roles {row.roles}) created; it is shown only now:")
    sys.stdout.write(row.token + "\n")


@app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """API tokens, active and revoked (never the tokens themselves)."""
    rows = services.list_tokens(options.runtime(config, migrate=False).engine)
    columns = ["id", "name", "prefix", "active", "created_at", "last_used_at", "revoked_at"]
    emit(rows, as_json, columns, "Tokens")


@app.command("revoke")
def tokens_revoke(
    name_or_id: Annotated[str, typer.Argument(help="Token name or id.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an active token: requests carrying it get 401 from now on."""
    runtime = options.runtime(config, migrate=True)
    row = services.revoke_token(runtime.engine, name_or_id)
    services.record_security_change(
        runtime.settings, runtime.engine, getpass.getuser(), f"token:{row.name}", "revoked"
    )
    emit(row, as_json, ["id", "name", "revoked_at"], "Revoked")
