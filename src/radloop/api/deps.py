"""Dependencies of the routers: the app's runtime and the authenticated caller (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from radloop.core import tokens
from radloop.core.db import MAX_ROW_ID
from radloop.runtime import Runtime

bearer = HTTPBearer(auto_error=False, description="An API token from `radloop tokens create NAME`.")


def get_context(request: Request) -> Runtime:
    """The :class:`~radloop.runtime.Runtime` that :func:`radloop.api.create_app` attached to the app."""
    ctx = request.app.state.radloop
    assert isinstance(ctx, Runtime)
    return ctx


Ctx = Annotated[Runtime, Depends(get_context)]


async def get_caller(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> tokens.Caller:
    """The token's owner; :class:`~radloop.core.tokens.AuthenticationError` (401) if none is valid."""
    token = credentials.credentials if credentials is not None else None
    interval = ctx.settings.api.token_touch_interval_s
    return await run_in_threadpool(tokens.authenticate, ctx.engine, token, interval)


Caller = Annotated[tokens.Caller, Depends(get_caller)]
"""Any valid token, whatever its roles. Routes declare a role instead (:mod:`radloop.api.auth`)."""


RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="A row id (job, delivery).")]
