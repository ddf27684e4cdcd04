"""Signed, expiring launch URLs for PACS workstations, and the review session they open.

A **launch URL** names a study (StudyInstanceUID or AccessionNumber), optionally the AI result to
review (the SEG's SeriesInstanceUID or SOPInstanceUID; the newest AI SEG of the study when
absent) and the reviewer, with a time stamp and an HMAC signature::

    {base}/review/launch?study=1.2.3&accession=&result=&reviewer=jdoe&ts=1767225600&sig=9f86d0…

* ``ts``: when the link was made, in Unix seconds (UTC). The link is valid from ``ts`` to
  ``ts + review.link_ttl_s``, or to ``exp`` (Unix seconds) when the link carries one; both
  ends are widened by ``review.clock_skew_s`` for clocks that disagree.
* ``exp − ts`` may not exceed ``review.max_link_lifetime_s`` (default one day).
* ``nonce`` (optional): a link carrying one opens one session only; radloop records it and
  refuses a second use (with ``review.one_time_links: true`` every link is one-time, recorded
  by its signature).
* ``sig``: lower-case hex HMAC-SHA256 (64 characters ``0-9a-f``; upper case is refused), keyed
  with ``review.launch_key`` (``secret_key`` when empty), of the query string that precedes
  ``&sig=``, byte for byte as sent. ``sig`` must be the last parameter. Any parameter may
  be empty; ``study`` and ``accession`` both empty make a *worklist* link (every result awaiting review).

A valid launch opens a **review session**: a cookie holding the reviewer, the result it may act
on (or the worklist), and its lifetime, signed with a key derived from ``secret_key`` (so that a
PACS holding the launch key still cannot forge a session).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from urllib.parse import parse_qsl, quote, urlencode

from radloop.core.errors import RadloopError
from radloop.core.refs import is_valid_uid
from radloop.core.roles import Role
from radloop.core.settings import Settings

LAUNCH_PARAMS = ("study", "accession", "result", "reviewer", "ts", "exp", "nonce")
"""Parameters a launch URL may carry before ``sig``, in the order radloop writes them."""

_MAX_TEXT = 128
_SIG_RE = re.compile(r"[0-9a-f]{64}")
_NONCE_RE = re.compile(r"[0-9A-Za-z_-]{8,64}")


class LaunchDeniedError(RadloopError):
    """A launch URL or a review session is not valid; ``reason`` says why in one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LaunchClaims:
    """What a verified launch URL says: who reviews which study's result, and until when."""

    reviewer: str
    study: str
    accession: str
    result: str
    issued_at: int
    expires_at: int
    nonce: str = ""
    signature: str = ""

    @property
    def is_worklist(self) -> bool:
        """A link naming no study opens the worklist."""
        return not self.study and not self.accession


@dataclass(frozen=True)
class ReviewSession:
    """A review session: its id, reviewer, the one result it may act on (None = any), its lifetime
    and its roles (a session from a signed PACS link is a ``radiologist`` one)."""

    session_id: str
    reviewer: str
    result_id: int | None
    issued_at: int
    expires_at: int
    roles: tuple[str, ...] = (Role.radiologist.value,)
    login: str = ""  # "oidc" when the user signed in with the identity provider

    def allows(self, result_id: int) -> bool:
        """Whether this session may view and decide on ``result_id``."""
        return self.result_id is None or self.result_id == result_id


def launch_key(settings: Settings) -> bytes:
    """The key launch URLs are signed with: ``review.launch_key``, else ``secret_key``."""
    key = settings.review.launch_key.get_secret_value() or settings.secret_key.get_secret_value()
    return key.encode("utf-8")


def session_key(settings: Settings) -> bytes:
    """The key review session cookies are signed with, derived from ``secret_key``."""
    return hmac.new(
        settings.secret_key.get_secret_value().encode("utf-8"), b"radloop review session v1", hashlib.sha256
    ).digest()


def signature(key: bytes, message: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``message`` (UTF-8) under ``key``."""
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_launch_query(
    key: bytes,
    *,
    reviewer: str,
    issued_at: int,
    study: str = "",
    accession: str = "",
    result: str = "",
    expires_at: int | None = None,
    nonce: str = "",
) -> str:
    """The signed query string of a launch URL (parameters in :data:`LAUNCH_PARAMS` order, then ``sig``)."""
    params = [
        ("study", study),
        ("accession", accession),
        ("result", result),
        ("reviewer", reviewer),
        ("ts", str(issued_at)),
    ]
    if expires_at is not None:
        params.append(("exp", str(expires_at)))
    if nonce:
        params.append(("nonce", nonce))
    query = urlencode(params, quote_via=quote)
    return f"{query}&sig={signature(key, query)}"


def launch_url(
    settings: Settings,
    *,
    reviewer: str,
    study: str = "",
    accession: str = "",
    result: str = "",
    ttl_s: float | None = None,
    now: float | None = None,
    one_time: bool = False,
) -> str:
    """A signed launch URL on ``review.base_url`` (or the API's address), valid for ``ttl_s``;
    ``one_time`` adds a random ``nonce`` so that it opens one session only."""
    issued = int(time.time() if now is None else now)
    expires = None if ttl_s is None else issued + int(ttl_s)
    query = sign_launch_query(
        launch_key(settings),
        reviewer=reviewer,
        issued_at=issued,
        study=study,
        accession=accession,
        result=result,
        expires_at=expires,
        nonce=secrets.token_urlsafe(16) if one_time else "",
    )
    return f"{base_url(settings)}/review/launch?{query}"


def base_url(settings: Settings) -> str:
    """Where browsers reach radloop: ``review.base_url``, else ``http://<api.host>:<api.port>``."""
    if settings.review.base_url:
        return settings.review.base_url
    host = settings.api.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.api.port}"


def verify_launch(
    query: str,
    key: bytes,
    *,
    now: float,
    ttl_s: float,
    skew_s: float,
    max_lifetime_s: float = 86400.0,
) -> LaunchClaims:
    """Check a launch URL's raw query string; :class:`LaunchDeniedError` names what is wrong."""
    signed, sig = _split_signature(query)
    if not hmac.compare_digest(signature(key, signed), sig):
        raise LaunchDeniedError("bad-signature", "the link's signature does not match")
    params = _parse_params(signed)
    claims = _claims(params, ttl_s, sig)
    if claims.expires_at - claims.issued_at > max_lifetime_s:
        raise LaunchDeniedError(
            "malformed",
            f"the link is valid for longer than review.max_link_lifetime_s ({max_lifetime_s:.0f} s)",
        )
    if now < claims.issued_at - skew_s:
        raise LaunchDeniedError("not-yet-valid", "the link was issued in the future (check the PACS clock)")
    if now > claims.expires_at + skew_s:
        raise LaunchDeniedError("expired", "the link has expired; open it again from the PACS")
    return claims


def _split_signature(query: str) -> tuple[str, str]:
    """The signed part of the query and the ``sig`` value; ``sig`` must come last."""
    if query.startswith("sig="):
        signed, sig = "", query[len("sig=") :]
    else:
        signed, found, sig = query.rpartition("&sig=")
        if not found:
            raise LaunchDeniedError("malformed", "the link carries no signature (sig)")
    if not _SIG_RE.fullmatch(sig):  # also keeps non-ASCII text away from hmac.compare_digest
        raise LaunchDeniedError("malformed", "sig must be the last parameter: 64 lower-case hex digits")
    return signed, sig


def _parse_params(signed: str) -> dict[str, str]:
    """Decoded parameters; a repeated parameter makes the link ambiguous, so it is refused."""
    try:
        pairs = parse_qsl(signed, keep_blank_values=True, strict_parsing=bool(signed))
    except ValueError as e:
        raise LaunchDeniedError("malformed", f"the link's query string cannot be parsed: {e}") from e
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise LaunchDeniedError("malformed", f"parameter {name!r} appears more than once")
        params[name] = value.strip()
    return params


def _claims(params: dict[str, str], ttl_s: float, sig: str) -> LaunchClaims:
    """The claims of a (signature-checked) link, each value checked for form."""
    reviewer = _text(params, "reviewer")
    if not reviewer:
        raise LaunchDeniedError("malformed", "the link names no reviewer")
    study = params.get("study", "")
    if study and not is_valid_uid(study):
        raise LaunchDeniedError("malformed", "study is not a valid StudyInstanceUID")
    result = params.get("result", "")
    if result and not is_valid_uid(result):
        raise LaunchDeniedError("malformed", "result is not a valid SeriesInstanceUID or SOPInstanceUID")
    issued = _unix_seconds(params, "ts")
    if issued is None:
        raise LaunchDeniedError("malformed", "the link carries no ts (issue time)")
    expires = _unix_seconds(params, "exp")
    if expires is not None and expires < issued:
        raise LaunchDeniedError("malformed", "exp is before ts")
    nonce = params.get("nonce", "")
    if nonce and not _NONCE_RE.fullmatch(nonce):
        raise LaunchDeniedError("malformed", "nonce must be 8-64 characters of letters, digits, _ -")
    return LaunchClaims(
        reviewer=reviewer,
        study=study,
        accession=_text(params, "accession"),
        result=result,
        issued_at=issued,
        expires_at=expires if expires is not None else issued + int(ttl_s),
        nonce=nonce,
        signature=sig,
    )


def _text(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if len(value) > _MAX_TEXT or any(not ch.isprintable() for ch in value):
        raise LaunchDeniedError("malformed", f"{name} must be at most {_MAX_TEXT} printable characters")
    return value


def _unix_seconds(params: dict[str, str], name: str) -> int | None:
    value = params.get(name, "")
    if not value:
        return None
    if not value.isdigit() or len(value) > 12:
        raise LaunchDeniedError("malformed", f"{name} must be Unix time in whole seconds")
    return int(value)


def new_session(
    claims: LaunchClaims,
    result_id: int | None,
    *,
    now: float,
    ttl_s: float,
    signed_in: ReviewSession | None = None,
) -> ReviewSession:
    """A fresh session for a verified launch (``result_id`` None for a worklist launch); with
    ``signed_in`` (the user's sign-on session) it keeps that user's roles and login."""
    issued = int(now)
    return ReviewSession(
        session_id=secrets.token_hex(16),
        reviewer=claims.reviewer,
        result_id=result_id,
        issued_at=issued,
        expires_at=issued + int(ttl_s),
        roles=signed_in.roles if signed_in is not None else (Role.radiologist.value,),
        login=signed_in.login if signed_in is not None else "",
    )


def encode_session(key: bytes, session: ReviewSession) -> str:
    """The cookie value: base64url(JSON) "." base64url(HMAC-SHA256)."""
    payload = _b64(json.dumps(asdict(session), separators=(",", ":"), sort_keys=True).encode("utf-8"))
    mac = _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def decode_session(key: bytes, token: str | None, *, now: float) -> ReviewSession:
    """The session in a cookie value; :class:`LaunchDeniedError` if missing, forged or expired."""
    if not token:
        raise LaunchDeniedError("no-session", "no review session: open the review link from the PACS")
    if not token.isascii():  # a cookie radloop wrote is base64url; compare_digest refuses non-ASCII text
        raise LaunchDeniedError("bad-session", "the review session is not valid")
    payload, _, mac = token.partition(".")
    expected = _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(expected, mac):
        raise LaunchDeniedError("bad-session", "the review session is not valid")
    try:
        fields = json.loads(_unb64(payload))
        if "roles" in fields:
            fields["roles"] = tuple(str(r) for r in fields["roles"])
        session = ReviewSession(**fields)
    except (ValueError, TypeError) as e:
        raise LaunchDeniedError("bad-session", "the review session is not valid") from e
    if now > session.expires_at:
        raise LaunchDeniedError("session-expired", "the review session has expired; open the link again")
    return session


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
