"""The edge where radloop errors become HTTP problems (RFC 9457, ``application/problem+json``).

Routers raise (or let services raise) radloop's own errors; this module maps each class to a
status once. Anything else is a bug: logged with its traceback, answered 500 without details.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radloop.api.oidc import LoginError
from radloop.api.schemas import Problem
from radloop.core.errors import (
    ConfigError,
    DiskFullError,
    InvalidInstanceError,
    NotAcceptableError,
    NotFoundError,
    PayloadTooLargeError,
    PullError,
    RadloopError,
    RequestError,
    UnsupportedMediaTypeError,
)
from radloop.core.jobs import JobTransitionError
from radloop.core.roles import PermissionDeniedError, UnknownRoleError
from radloop.core.tokens import AuthenticationError, TokenNameError
from radloop.viewer_launch.signing import LaunchDeniedError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

# Most specific first: the first class an error is an instance of decides its status.
STATUS_OF: list[tuple[type[RadloopError], int]] = [
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),  # a valid token or session without the role the route needs
    (LoginError, 403),  # a sign-on that failed: state, nonce, ID token
    (LaunchDeniedError, 403),  # a review link or session that is missing, forged, expired or elsewhere
    (NotFoundError, 404),
    (JobTransitionError, 409),
    (TokenNameError, 409),
    (UnsupportedMediaTypeError, 415),
    (NotAcceptableError, 406),
    (PayloadTooLargeError, 413),
    (DiskFullError, 507),
    (InvalidInstanceError, 400),
    (UnknownRoleError, 400),
    (RequestError, 400),
    (PullError, 502),
    (ConfigError, 400),
    (RadloopError, 409),
]


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem-details response."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def status_of(error: RadloopError) -> int:
    """The HTTP status for a radloop error."""
    return next(status for cls, status in STATUS_OF if isinstance(error, cls))


async def _radloop_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadloopError)
    status = status_of(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="radloop"'} if status == 401 else None
    if status >= 500:
        log.error("request failed: %s", exc)
    return problem(status, str(exc), headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
    )
    return problem(422, details or "invalid request")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error (logged on the server)")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RadloopError, _radloop_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def responses(*codes: int, ok: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: problem details for these statuses, 401 and 403 (a token without the
    route's role), and ``ok`` for 200 if given."""
    schema = {"$ref": "#/components/schemas/Problem"}
    out: dict[int | str, dict[str, Any]] = {}
    for code in dict.fromkeys((401, 403, *codes)):
        out[code] = {
            "model": Problem,
            "description": HTTPStatus(code).phrase,
            "content": {PROBLEM: {"schema": schema}},
        }
    if ok is not None:
        out[200] = ok
    return out
