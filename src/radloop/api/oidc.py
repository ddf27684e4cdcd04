"""Sign-on for people with OpenID Connect: authorization code + PKCE, ID token verified.

``GET /auth/login?next=/review/…`` starts a login: a fresh ``state``, ``nonce`` and PKCE
verifier go into a short-lived signed cookie, and the browser goes to the provider's
authorization endpoint (found by discovery from ``oidc.issuer``). ``GET /auth/callback``
checks ``state``, exchanges the code (with the verifier) at the token endpoint, and verifies
the ID token: signature by a key of the provider's JWKS, ``iss`` = issuer, ``aud`` = client id,
``exp``/``iat``, and ``nonce``. The user's roles come from ``oidc.roles_claim``; the result is a
review session cookie (the same as a PACS launch opens) for that user with those roles.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import jwt
import requests
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from radloop.api.auth import PUBLIC
from radloop.api.deps import Ctx
from radloop.core import atna
from radloop.core.db import session_scope
from radloop.core.errors import RadloopError
from radloop.core.roles import Role
from radloop.core.settings import OidcSettings, Settings
from radloop.viewer_launch.routes import COOKIE, is_https
from radloop.viewer_launch.signing import (
    LaunchDeniedError,
    ReviewSession,
    decode_session,
    encode_session,
    session_key,
)

LOGIN_COOKIE = "radloop_login"
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class LoginError(RadloopError):
    """A sign-on failed: provider unreachable, state or nonce mismatch, ID token not valid."""


@dataclass(frozen=True)
class SignedIn:
    """Who signed in: the reviewer name and the radloop roles the ID token grants."""

    username: str
    roles: tuple[str, ...]
    claims: dict[str, Any]


class OidcClient:
    """The relying party: discovery, authorization URL, code exchange, ID token verification."""

    def __init__(self, cfg: OidcSettings) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None

    def discovery(self) -> dict[str, Any]:
        """The provider's metadata (fetched once), its issuer checked against ``oidc.issuer``."""
        with self._lock:
            if self._discovery is None:
                url = f"{self.cfg.issuer}/.well-known/openid-configuration"
                try:
                    answer = requests.get(url, timeout=self.cfg.timeout_s)
                    answer.raise_for_status()
                    meta = answer.json()
                except (requests.RequestException, ValueError) as e:
                    raise LoginError(f"OpenID discovery at {url} failed: {e}") from e
                if meta.get("issuer", "").rstrip("/") != self.cfg.issuer:
                    raise LoginError(
                        f"the provider says its issuer is {meta.get('issuer')!r}, not {self.cfg.issuer!r}"
                    )
                self._discovery = meta
                self._jwks = jwt.PyJWKClient(meta["jwks_uri"], timeout=int(self.cfg.timeout_s))
            return self._discovery

    def authorization_url(self, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        """Where to send the browser: the authorization endpoint with PKCE (S256)."""
        challenge = _b64(hashlib.sha256(verifier.encode("ascii")).digest())
        params = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.cfg.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.discovery()['authorization_endpoint']}?{urlencode(params)}"

    def exchange_code(self, code: str, redirect_uri: str, verifier: str) -> str:
        """The ID token the token endpoint gives for ``code``."""
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": self.cfg.client_id,
        }
        secret = self.cfg.client_secret.get_secret_value()
        auth = (self.cfg.client_id, secret) if secret else None
        try:
            answer = requests.post(
                self.discovery()["token_endpoint"], data=data, auth=auth, timeout=self.cfg.timeout_s
            )
        except requests.RequestException as e:
            raise LoginError(f"the token endpoint is unreachable: {e}") from e
        if answer.status_code != 200:
            raise LoginError(f"the token endpoint refused the code ({answer.status_code})")
        token = answer.json().get("id_token")
        if not isinstance(token, str):
            raise LoginError("the token endpoint sent no id_token")
        return token

    def verify_id_token(self, token: str, nonce: str, *, now: float | None = None) -> SignedIn:
        """Check the ID token (signature, issuer, audience, times, nonce); :class:`LoginError` if not."""
        self.discovery()
        assert self._jwks is not None
        moment = time.time() if now is None else now
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=_ALGORITHMS,
                audience=self.cfg.client_id,
                issuer=self.cfg.issuer,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as e:
            raise LoginError(f"the ID token is not valid: {e}") from e
        leeway = self.cfg.leeway_s
        if float(claims["exp"]) + leeway < moment:
            raise LoginError("the ID token has expired")
        if float(claims["iat"]) - leeway > moment:
            raise LoginError("the ID token was issued in the future")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise LoginError("the ID token's nonce does not match this login")
        username = str(claims.get(self.cfg.username_claim) or claims["sub"])[:128]
        return SignedIn(username, _roles(claims.get(self.cfg.roles_claim)), claims)


def _roles(value: Any) -> tuple[str, ...]:
    names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
    known = {r.value for r in Role}
    return tuple(dict.fromkeys(str(n) for n in names if str(n) in known))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------- routes

router = APIRouter(prefix="/auth", tags=["sign-on"], include_in_schema=False)


def get_client(request: Request, ctx: Ctx) -> OidcClient:
    """The app's one :class:`OidcClient` (discovery and JWKS cached); 404 when sign-on is off."""
    if not ctx.settings.oidc.enabled:
        raise LoginError("sign-on is not configured (oidc.issuer)")
    client = getattr(request.app.state, "oidc_client", None)
    if not isinstance(client, OidcClient):
        client = request.app.state.oidc_client = OidcClient(ctx.settings.oidc)
    return client


Client = Annotated[OidcClient, Depends(get_client)]


def _login_key(settings: Settings) -> bytes:
    return hmac.new(
        settings.secret_key.get_secret_value().encode(), b"radloop oidc login v1", "sha256"
    ).digest()


def _redirect_uri(request: Request, settings: Settings) -> str:
    base = settings.review.base_url or str(request.base_url).rstrip("/")
    return f"{base}/auth/callback"


def _safe_next(target: str) -> str:
    """Only a path on this server (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/review/worklist"


@router.get("/login", dependencies=[PUBLIC])
async def login(
    request: Request, ctx: Ctx, client: Client, next: Annotated[str, Query()] = "/review/worklist"
) -> Response:
    """Start a sign-on: remember state, nonce and PKCE verifier in a signed cookie, go to the provider."""
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    url = await run_in_threadpool(
        client.authorization_url, _redirect_uri(request, ctx.settings), state, nonce, verifier
    )
    payload = {
        "state": state,
        "nonce": nonce,
        "verifier": verifier,
        "next": _safe_next(next),
        "exp": time.time() + ctx.settings.oidc.login_ttl_s,
    }
    body = _b64(json.dumps(payload).encode())
    mac = _b64(hmac.new(_login_key(ctx.settings), body.encode(), "sha256").digest())
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        LOGIN_COOKIE,
        f"{body}.{mac}",
        max_age=int(ctx.settings.oidc.login_ttl_s),
        path="/auth",
        httponly=True,
        samesite="lax",
        secure=is_https(request, ctx.settings),
    )
    return response


@router.get("/callback", dependencies=[PUBLIC])
async def callback(
    request: Request, ctx: Ctx, client: Client, code: str = "", state: str = "", error: str = ""
) -> Response:
    """Finish a sign-on: check state, exchange the code, verify the ID token, open a review session."""
    try:
        started = _started_login(request.cookies.get(LOGIN_COOKIE, ""), ctx.settings)
        if error or not code:
            raise LoginError(f"the provider refused the sign-on: {error or 'no code'}")
        if not hmac.compare_digest(state, started["state"]):
            raise LoginError("the sign-on's state does not match (start again)")
        token = await run_in_threadpool(
            client.exchange_code, code, _redirect_uri(request, ctx.settings), started["verifier"]
        )
        user = await run_in_threadpool(client.verify_id_token, token, started["nonce"])
    except LoginError as e:
        await run_in_threadpool(_audit_failed_login, request, ctx, str(e))
        raise
    await run_in_threadpool(_audit_login, request, ctx, user.username, True)
    now = int(time.time())
    session = ReviewSession(
        session_id=secrets.token_hex(16),
        reviewer=user.username,
        result_id=None,
        issued_at=now,
        expires_at=now + int(ctx.settings.review.session_ttl_s),
        roles=user.roles,
        login="oidc",
    )
    response = RedirectResponse(started["next"], status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path="/auth")
    response.set_cookie(
        COOKIE,
        encode_session(session_key(ctx.settings), session),
        max_age=int(ctx.settings.review.session_ttl_s),
        path="/review",
        httponly=True,
        samesite="lax",
        secure=is_https(request, ctx.settings),
    )
    return response


logout_router = APIRouter(prefix="/review", tags=["sign-on"], include_in_schema=False)
"""``/review/logout``: under the review cookie's path, so the browser sends the session it ends."""


@logout_router.get("/logout", dependencies=[PUBLIC])
def logout(request: Request, ctx: Ctx) -> Response:
    """End the review session: the cookie is cleared and the logout audited (PS3.15 A.5.3.14)."""
    try:
        session = decode_session(session_key(ctx.settings), request.cookies.get(COOKIE), now=time.time())
    except LaunchDeniedError:
        session = None
    if session is not None:
        _audit_login(request, ctx, session.reviewer, False)
    response = Response("signed out\n", media_type="text/plain")
    response.delete_cookie(COOKIE, path="/review")
    return response


def _audit_login(request: Request, ctx: Ctx, user: str, login: bool) -> None:
    """A User Authentication audit message: ``user`` logged in (``login``) or out."""
    address = request.client.host if request.client else ""
    with session_scope(ctx.engine) as s:
        atna.record(s, ctx.settings.audit, atna.user_authentication(user, login, address=address))


def _audit_failed_login(request: Request, ctx: Ctx, reason: str) -> None:
    """A failed login, audited once per reason per ``review.denied_audit_interval_s`` with the
    count of those in between (junk callbacks must not flood the audit trail)."""
    denials: dict[str, tuple[float, int]] | None = getattr(request.app.state, "login_denials", None)
    if denials is None:
        denials = request.app.state.login_denials = {}
    now = time.monotonic()
    last, count = denials.get(reason, (-1e18, 0))  # a race between two threads costs one extra row
    if now - last < ctx.settings.review.denied_audit_interval_s:
        denials[reason] = (last, count + 1)
        return
    denials[reason] = (now, 0)
    address = request.client.host if request.client else ""
    text = f"{reason} (+{count} more since the last one audited)" if count else reason
    message = atna.user_authentication(
        "unknown", True, address=address, outcome=atna.Outcome.minor_failure, description=text
    )
    with session_scope(ctx.engine) as s:
        atna.record(s, ctx.settings.audit, message)


def _started_login(cookie: str, settings: Settings) -> dict[str, Any]:
    body, _, mac = cookie.partition(".")
    expected = _b64(hmac.new(_login_key(settings), body.encode(), "sha256").digest())
    if not cookie.isascii() or not mac or not hmac.compare_digest(expected, mac):
        raise LoginError("no sign-on in progress (start again)")
    started: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if time.time() > float(started["exp"]):
        raise LoginError("the sign-on took too long (start again)")
    return started
