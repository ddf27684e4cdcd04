"""Which role each API route needs: dependencies that authenticate the token and check its roles.

A route declares its role in its signature with one of the ``Annotated`` aliases (``_caller:
Viewer``, ``caller: Operator``…) or, when it is public by design, with ``dependencies=[PUBLIC]``.
Each is a :class:`~radloop.core.roles.RoleRequirement`, so :func:`declared_roles` (and the test
that walks every route) can tell a route that declares a role from one that forgot to.
A missing or unknown token is 401; a valid token without the role is 403.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import Depends, WebSocket, WebSocketException
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials
from starlette.routing import BaseRoute

from radloop.api.deps import Ctx, bearer, get_caller
from radloop.core import tokens
from radloop.core.roles import PermissionDeniedError, Public, Role, RoleRequirement


class TokenRole(RoleRequirement):
    """Dependency: the caller's API token, which must hold a role granting :attr:`role`."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(
        self, ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> tokens.Caller:
        caller = await get_caller(ctx, credentials)
        self.check(caller.roles, f"token {caller.name!r}")
        return caller


class WebSocketRole(RoleRequirement):
    """Dependency of a WebSocket route: the Bearer token of the upgrade request, holding :attr:`role`.

    A missing, unknown or under-privileged token closes the socket with 1008 (policy violation)."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, websocket: WebSocket) -> tokens.Caller:
        ctx = websocket.app.state.radloop
        header = websocket.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        try:
            interval = ctx.settings.api.token_touch_interval_s
            caller: tokens.Caller = await run_in_threadpool(tokens.authenticate, ctx.engine, token, interval)
            self.check(caller.roles, f"token {caller.name!r}")
        except (tokens.AuthenticationError, PermissionDeniedError) as e:
            raise WebSocketException(code=1008, reason=str(e)[:120]) from e
        return caller


_REQUIREMENTS = {role: TokenRole(role) for role in Role}


def require(role: Role) -> TokenRole:
    """The dependency for routes that need ``role`` (one shared instance per role)."""
    return _REQUIREMENTS[role]


PUBLIC = Depends(Public())
"""``dependencies=[PUBLIC]`` on a route that needs no credentials by design."""

Viewer = Annotated[tokens.Caller, Depends(require(Role.viewer))]
Radiologist = Annotated[tokens.Caller, Depends(require(Role.radiologist))]
DataSteward = Annotated[tokens.Caller, Depends(require(Role.data_steward))]
Operator = Annotated[tokens.Caller, Depends(require(Role.operator))]
Admin = Annotated[tokens.Caller, Depends(require(Role.admin))]
ViewerSocket = Annotated[tokens.Caller, Depends(WebSocketRole(Role.viewer))]


def iter_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of an app or router, into included routers (FastAPI includes them lazily)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from iter_routes(included.routes)
        else:
            yield route


def declared_roles(route: BaseRoute) -> list[RoleRequirement]:
    """The role requirements a route declares (in its signature, its router's or its own list)."""
    found: list[RoleRequirement] = []
    dependant = getattr(route, "dependant", None)
    if isinstance(dependant, Dependant):
        found.extend(_walk(dependant))
    for dep in getattr(route, "dependencies", []) or []:
        if isinstance(dep, DependsParam) and isinstance(dep.dependency, RoleRequirement):
            found.append(dep.dependency)
    return found


def _walk(dependant: Dependant) -> Iterator[RoleRequirement]:
    for sub in dependant.dependencies:
        if isinstance(sub.call, RoleRequirement):
            yield sub.call
        yield from _walk(sub)
