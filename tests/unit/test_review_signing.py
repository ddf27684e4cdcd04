"""Launch URLs (HMAC, expiry, clock skew) and review session cookies."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import replace
from urllib.parse import quote

import pytest

from radloop.core.errors import ConfigError
from radloop.core.settings import load_settings
from radloop.viewer_launch.signing import (
    LaunchDeniedError,
    ReviewSession,
    decode_session,
    encode_session,
    launch_url,
    sign_launch_query,
    verify_launch,
)

KEY = b"k" * 40
STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
NOW = 1_800_000_000


def _verify(query: str, now: float = NOW, ttl: float = 300, skew: float = 60) -> object:
    return verify_launch(query, KEY, now=now, ttl_s=ttl, skew_s=skew)


def _reason(query: str, **kw: float) -> str:
    with pytest.raises(LaunchDeniedError) as info:
        _verify(query, **kw)
    return info.value.reason


def test_signed_link_round_trips() -> None:
    query = sign_launch_query(KEY, reviewer="Dr Jane Doe", study=STUDY, result="1.2.3", issued_at=NOW)
    claims = _verify(query)
    assert claims == replace(
        claims,
        reviewer="Dr Jane Doe",
        study=STUDY,
        accession="",
        result="1.2.3",
        issued_at=NOW,
        expires_at=NOW + 300,
    )


def test_a_pacs_filled_template_verifies() -> None:
    """What a PACS does: fill the template's placeholders, HMAC the query string, append &sig=."""
    template = "study={StudyInstanceUID}&accession={AccessionNumber}&result=&reviewer={UserID}&ts={UnixTime}"
    filled = template.format(
        StudyInstanceUID=STUDY, AccessionNumber="A%2F77", UserID=quote("jdoe"), UnixTime=NOW
    )
    sig = hmac.new(KEY, filled.encode(), hashlib.sha256).hexdigest()
    claims = _verify(f"{filled}&sig={sig}")
    assert (claims.accession, claims.reviewer) == ("A/77", "jdoe")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: q.replace("reviewer=jdoe", "reviewer=admin"),
        lambda q: q.replace(f"ts={NOW}", f"ts={NOW + 3600}"),
        lambda q: q[:-1] + ("0" if q[-1] != "0" else "1"),
        lambda q: q.replace(f"study={STUDY}", "study=1.2.3"),
    ],
)
def test_tampered_link_is_denied(tamper: object) -> None:
    query = sign_launch_query(KEY, reviewer="jdoe", study=STUDY, issued_at=NOW)
    assert _reason(tamper(query)) == "bad-signature"  # type: ignore[operator]


def test_other_key_is_denied() -> None:
    query = sign_launch_query(b"x" * 40, reviewer="jdoe", study=STUDY, issued_at=NOW)
    assert _reason(query) == "bad-signature"


def test_expiry_with_clock_skew() -> None:
    query = sign_launch_query(KEY, reviewer="jdoe", study=STUDY, issued_at=NOW)
    _verify(query, now=NOW + 300 + 59)  # past the TTL, within the skew
    assert _reason(query, now=NOW + 300 + 61) == "expired"
    _verify(query, now=NOW - 59)  # the PACS clock is a little ahead
    assert _reason(query, now=NOW - 61) == "not-yet-valid"


def test_explicit_exp_overrides_ttl() -> None:
    query = sign_launch_query(KEY, reviewer="jdoe", study=STUDY, issued_at=NOW, expires_at=NOW + 86400)
    assert _verify(query, now=NOW + 86000).expires_at == NOW + 86400
    assert _reason(query, now=NOW + 86400 + 61) == "expired"


@pytest.mark.parametrize(
    "query",
    [
        "study=1.2.3&reviewer=jdoe&ts=1",  # no signature
        f"sig={'0' * 64}&reviewer=jdoe",  # signature not last
    ],
)
def test_malformed_links(query: str) -> None:
    assert _reason(query) in ("malformed", "bad-signature")


@pytest.mark.parametrize("sig", ["\u00e9" * 64, "g" * 64, "0" * 63 + "\u00e9", "0" * 63 + " "])
def test_signature_that_is_not_64_hex_digits_is_malformed(sig: str) -> None:
    """Also non-ASCII text (a raw query is read as latin-1), which hmac.compare_digest would refuse."""
    assert _reason(f"study=1.2.3&reviewer=jdoe&ts={NOW}&sig={sig}") == "malformed"


@pytest.mark.parametrize("cookie", ["\u00e9", "abc.\u00e9", "\u00e9." + "A" * 43, "e30.\u2603", "\U0001f600"])
def test_non_ascii_session_cookie_is_a_bad_session(cookie: str) -> None:
    with pytest.raises(LaunchDeniedError) as info:
        decode_session(KEY, cookie, now=NOW)
    assert info.value.reason == "bad-session"


@pytest.mark.parametrize(
    "params",
    [
        "study=1.2.3&reviewer=jdoe&reviewer=root&ts={now}",
        "study=not-a-uid&reviewer=jdoe&ts={now}",
        "study=1.2.3&reviewer=&ts={now}",
        "study=1.2.3&reviewer=jdoe&ts=soon",
        "study=1.2.3&reviewer=jdoe",
        "study=1.2.3&reviewer=jdoe&ts={now}&exp=1",
    ],
)
def test_signed_but_invalid_claims_are_malformed(params: str) -> None:
    filled = params.format(now=NOW)
    sig = hmac.new(KEY, filled.encode(), hashlib.sha256).hexdigest()
    assert _reason(f"{filled}&sig={sig}") == "malformed"


def test_launch_url_uses_base_url_and_key() -> None:
    settings = load_settings(
        None, review={"base_url": "https://radloop.example.org/", "launch_key": "p" * 32}
    )
    url = launch_url(settings, reviewer="jdoe", study=STUDY, ttl_s=600, now=NOW)
    assert url.startswith("https://radloop.example.org/review/launch?study=")
    claims = verify_launch(url.split("?", 1)[1], b"p" * 32, now=NOW, ttl_s=1, skew_s=0)
    assert claims.expires_at == NOW + 600


def test_short_launch_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="launch_key"):
        load_settings(None, review={"launch_key": "short"})


def test_session_cookie_round_trip_and_tamper() -> None:
    session = ReviewSession(
        session_id="ab" * 16, reviewer="jdoe", result_id=7, issued_at=NOW, expires_at=NOW + 60
    )
    token = encode_session(KEY, session)
    assert decode_session(KEY, token, now=NOW + 1) == session
    assert session.allows(7) and not session.allows(8)
    assert replace(session, result_id=None).allows(8)
    forged = encode_session(KEY, replace(session, result_id=None)).split(".")[0] + "." + token.split(".")[1]
    for bad, reason in [
        (forged, "bad-session"),
        (token + "x", "bad-session"),
        (None, "no-session"),
        ("garbage", "bad-session"),
    ]:
        with pytest.raises(LaunchDeniedError) as info:
            decode_session(KEY, bad, now=NOW)
        assert info.value.reason == reason
    with pytest.raises(LaunchDeniedError, match="expired"):
        decode_session(KEY, token, now=NOW + 61)


@pytest.mark.parametrize(("argument", "field"), [(STUDY, "study"), ("ACC-77", "accession"), (None, None)])
def test_review_url_command(monkeypatch: pytest.MonkeyPatch, argument: str | None, field: str | None) -> None:
    from typer.testing import CliRunner

    from radloop.cli import app

    monkeypatch.setenv("RADLOOP_SECRET_KEY", "c" * 40)
    args = ["review-url", *([argument] if argument else []), "--reviewer", "jdoe", "--ttl", "120"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    url = done.output.strip()
    assert url.startswith("http://127.0.0.1:8080/review/launch?")
    claims = verify_launch(url.split("?", 1)[1], b"c" * 40, now=time.time(), ttl_s=1, skew_s=0)
    assert claims.reviewer == "jdoe" and claims.expires_at - claims.issued_at == 120
    assert (claims.study, claims.accession) == ((argument, "") if field == "study" else ("", argument or ""))
    assert claims.is_worklist == (argument is None)
