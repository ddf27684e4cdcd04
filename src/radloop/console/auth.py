"""Who may use the console: a console session cookie, opened by an API token or by single sign-on.

People sign in at ``/console/login`` with an API token an admin made for them (``radloop tokens
create NAME --role operator``), or, with ``oidc.issuer`` set, through the same sign-on as the
review app: ``/auth/login?next=/review/to-console`` ends in the review session cookie (path
``/review``), and ``/review/to-console`` turns that session into a console session with the same
user and roles. The console cookie (``radloop_console``, path ``/console``, HttpOnly,
SameSite=Lax) holds a :class:`~radloop.viewer_launch.signing.ReviewSession` signed with a key of
its own (derived from ``secret_key``), so neither cookie can stand in for the other.

Pages declare their role with :class:`ConsolePage` (no session: redirect to the login page; a
session without the role: a 403 page); actions with :class:`ConsoleAction` (401/403 problem) and
must carry ``X-Radloop-Console: 1``, which a cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from radloop.core.roles import PermissionDeniedError, Role, RoleRequirement
from radloop.core.settings import Settings
from radloop.core.tokens import AuthenticationError
from radloop.viewer_launch.signing import LaunchDeniedError, ReviewSession, decode_session

COOKIE = "radloop_console"
ACTION_HEADER = "X-Radloop-Console"


def console_key(settings: Settings) -> bytes:
    """The key console session cookies are signed with, derived from ``secret_key``."""
    return hmac.new(
        settings.secret_key.get_secret_value().encode("utf-8"), b"radloop console session v1", hashlib.sha256
    ).digest()


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.radloop.settings
    return settings


def console_session(request: Request) -> ReviewSession:
    """The session in the console cookie; :class:`LaunchDeniedError` if missing, forged or expired."""
    try:
        return decode_session(console_key(_settings(request)), request.cookies.get(COOKIE), now=time.time())
    except LaunchDeniedError as e:
        raise AuthenticationError(f"no console session: sign in at /console/login ({e})") from e


class ConsolePage(RoleRequirement):
    """Dependency of console pages: the session holding :attr:`role`, or the answer to give instead
    (a redirect to the login page, or a 403 page)."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, request: Request) -> ReviewSession | Response:
        try:
            session = console_session(request)
        except AuthenticationError:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/console/login?next={quote(target, safe='')}", status_code=303)
        try:
            self.check(session.roles, f"{session.reviewer!r}")
        except PermissionDeniedError as e:
            from radloop.console import pages

            return HTMLResponse(pages.message_page("Not allowed", str(e)), status_code=403)
        return session


class ConsoleAction(RoleRequirement):
    """Dependency of console actions: the session holding :attr:`role` (401/403 problem otherwise),
    on a request that carries ``X-Radloop-Console: 1``."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(
        self, request: Request, x_radloop_console: Annotated[str, Header()] = ""
    ) -> ReviewSession:
        session = console_session(request)
        self.check(session.roles, f"{session.reviewer!r}")
        if x_radloop_console != "1":
            raise HTTPException(403, f"console actions must carry {ACTION_HEADER}: 1")
        return session


class SignedOnReview(RoleRequirement):
    """Dependency of ``/review/to-console``: a review session opened by single sign-on (a PACS
    link's session is for one review, not for the console)."""

    role = Role.viewer

    async def __call__(self, request: Request) -> ReviewSession | Response:
        from radloop.viewer_launch.routes import COOKIE as REVIEW_COOKIE
        from radloop.viewer_launch.signing import session_key

        try:
            session = decode_session(
                session_key(_settings(request)), request.cookies.get(REVIEW_COOKIE), now=time.time()
            )
            if session.login != "oidc":
                raise LaunchDeniedError("not-signed-on", "this session was not opened by single sign-on")
            self.check(session.roles, f"{session.reviewer!r}")
        except (LaunchDeniedError, PermissionDeniedError):
            return RedirectResponse("/console/login", status_code=303)
        return session


ViewerPage = Annotated[ReviewSession | Response, Depends(ConsolePage(Role.viewer))]
OperatorAction = Annotated[ReviewSession, Depends(ConsoleAction(Role.operator))]
SignedOn = Annotated[ReviewSession | Response, Depends(SignedOnReview())]
