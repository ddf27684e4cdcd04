"""API tokens: machine credentials for the HTTP API.

A token is 32 random bytes (``rl_`` + URL-safe base64), shown once when created. Only its
SHA-256 is stored: the token's entropy makes a key unnecessary, and changing ``secret_key``
does not invalidate every token. A revoked token stays listed (who had access, until when).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from radloop.core.db import session_scope
from radloop.core.errors import RadloopError
from radloop.core.models import ApiToken, utcnow
from radloop.core.roles import DEFAULT_TOKEN_ROLES, Role, parse_roles

TOKEN_PREFIX = "rl_"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@")


class AuthenticationError(RadloopError):
    """A request carried no API token, or one that is unknown or revoked."""


class TokenNameError(RadloopError):
    """A token name is malformed, or an active token already has it."""


@dataclass(frozen=True)
class Caller:
    """Who an authenticated request comes from (the token's id, name and roles)."""

    token_id: int
    name: str
    roles: tuple[str, ...] = field(default=tuple(r.value for r in DEFAULT_TOKEN_ROLES))


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise TokenNameError(f"token name {name!r} must be 1-64 characters of letters, digits, _ - . @")
    return name


def create(
    engine: Engine, name: str, roles: Sequence[Role | str] = DEFAULT_TOKEN_ROLES
) -> tuple[ApiToken, str]:
    """Create a token called ``name`` (unique among active tokens) holding ``roles``; returns the
    row and the token. :class:`TokenNameError` for a bad name, ``ValueError`` for an unknown role."""
    _check_name(name)
    role_names = " ".join(parse_roles(str(r) for r in roles)) or " ".join(DEFAULT_TOKEN_ROLES)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with session_scope(engine) as s:
        clash = s.exec(
            select(ApiToken).where(ApiToken.name == name, col(ApiToken.revoked_at).is_(None))
        ).first()
        if clash is not None:
            raise TokenNameError(f"an active token is already called {name!r} (revoke it first)")
        row = ApiToken(
            name=name, token_hash=hash_token(token), prefix=token[: len(TOKEN_PREFIX) + 4], roles=role_names
        )
        s.add(row)
        s.flush()
        return row, token


def revoke(engine: Engine, name_or_id: str) -> ApiToken:
    """Revoke the active token with this name (or this id); returns its row."""
    with session_scope(engine) as s:
        q = select(ApiToken).where(col(ApiToken.revoked_at).is_(None))
        if name_or_id.isdigit():
            q = q.where(ApiToken.id == int(name_or_id))
        else:
            q = q.where(ApiToken.name == name_or_id)
        row = s.exec(q).first()
        if row is None:
            raise TokenNameError(f"no active token called {name_or_id!r}")
        row.revoked_at = utcnow()
        s.add(row)
        return row


def list_all(engine: Engine) -> list[ApiToken]:
    """Every token, active and revoked, oldest first."""
    with session_scope(engine) as s:
        return list(s.exec(select(ApiToken).order_by(col(ApiToken.id))).all())


def authenticate(engine: Engine, token: str | None, touch_interval_s: float = 60.0) -> Caller:
    """The caller a token belongs to; :class:`AuthenticationError` if it is missing, unknown or revoked.

    ``last_used_at`` is written at most every ``touch_interval_s`` seconds (not on every request).
    """
    if not token:
        raise AuthenticationError("an API token is required (Authorization: Bearer <token>)")
    with session_scope(engine) as s:
        row = s.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
        if row is None or row.id is None:
            raise AuthenticationError("unknown API token")
        if row.revoked_at is not None:  # said without the name: the caller may not know whose it was
            raise AuthenticationError("API token revoked")
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at >= timedelta(seconds=touch_interval_s):
            row.last_used_at = now
            s.add(row)
        return Caller(row.id, row.name, tuple(row.roles.split()))
