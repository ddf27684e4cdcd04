"""Sign-on against a real OpenID provider: npm ``oidc-provider`` (certified) on Debian's Node.

The provider (``tests/oidc/provider.mjs``) runs on a free loopback port with three users (any
password): jdoe (radiologist), vera (viewer), sam (data-steward). radloop serves HTTP for real
(``ApiServer``) with ``review.require_login`` on. Chromium signs jdoe in through the review app
and accepts a result; ID tokens with a wrong audience, expired or with a tampered signature are
refused; a viewer gets 403 on a decision.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import peers
import review_env
from radloop.api.oidc import LoginError, OidcClient
from radloop.api.serving import ApiServer
from radloop.core.settings import OidcSettings
from radloop.runtime import Runtime
from radloop.viewer_launch.signing import launch_key, sign_launch_query

pytestmark = pytest.mark.peers

OIDC_DIR = Path(__file__).resolve().parents[1] / "oidc"
CLIENT_SECRET = "radloop-oidc-test-client-secret-0123456789"


def _provider_dir() -> Path:
    """Where ``oidc-provider`` is installed (``scripts/test`` runs the npm step; done here if missing)."""
    folder = Path(os.environ.get("OIDC_PROVIDER_DIR", OIDC_DIR))
    if not (folder / "node_modules" / "oidc-provider").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed (scripts/test installs it)")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), "oidc-provider@8"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return folder


@dataclass
class Site:
    """The provider, radloop serving HTTP, and a result to review."""

    issuer: str
    base: str
    env: review_env.ReviewEnv
    server: ApiServer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Iterator[Site]:
    node = peers.require_binary("node")
    folder = _provider_dir()
    op_port, api_port = peers.free_port(), peers.free_port()
    base = f"http://127.0.0.1:{api_port}"
    proc = subprocess.Popen(
        [node, str(OIDC_DIR / "provider.mjs"), str(op_port), f"{base}/auth/callback", CLIENT_SECRET],
        env={**os.environ, "OIDC_PROVIDER_DIR": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and "ready" in proc.stdout.readline()
        issuer = f"http://127.0.0.1:{op_port}"
        env = review_env.make_review_env(
            tmp_path_factory.mktemp("oidc"),
            t1_series_dir,
            n_results=1,
            secret_key="kqf-cqvFWfw9ew7J3WkVlrK3SIDVRT6OPQW8ZFPL9jY",
            api={"port": api_port},
            review={"base_url": base, "require_login": True},
            oidc={"issuer": issuer, "client_id": "radloop", "client_secret": CLIENT_SECRET},
        )
        server = ApiServer(Runtime.build(env.settings, migrate=False))
        server.start()
        try:
            yield Site(issuer, base, env, server)
        finally:
            server.stop()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _launch_url(site: Site, reviewer: str) -> str:
    query = sign_launch_query(
        launch_key(site.env.settings), reviewer=reviewer, issued_at=int(time.time()), study=site.env.study_uid
    )
    return f"{site.base}/review/launch?{query}"


def _sign_in(http: requests.Session, start: str, user: str) -> requests.Response:
    """Follow ``start`` to the provider's login form, sign in as ``user``, follow back to radloop."""
    form = http.get(start)
    assert form.status_code == 200 and 'name="login"' in form.text, form.text[:300]
    action = re.search(r'action="([^"]+)"', form.text)
    assert action is not None
    target = requests.compat.urljoin(form.url, action.group(1))
    return http.post(target, data={"prompt": "login", "login": user, "password": "any"})


def test_chromium_signs_in_launches_and_accepts(site: Site, tmp_path: Path) -> None:
    import browser

    with browser.chromium(tmp_path / "profile") as context:
        page = context.new_page()
        page.goto(_launch_url(site, "jdoe"))
        page.wait_for_selector("input[name=login]", timeout=30_000)  # require_login: the provider first
        page.fill("input[name=login]", "jdoe")
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=90_000)
        assert "/review/app/" in page.url
        session = page.evaluate("fetch('/review/api/session').then(r => r.json())")
        assert session["reviewer"] == "jdoe" and session["roles"] == ["radiologist"]
        page.keyboard.press("KeyA")
        page.wait_for_selector("body[data-decision='accepted']", state="attached", timeout=30_000)


def test_a_viewer_signs_in_but_cannot_decide(site: Site) -> None:
    http = requests.Session()
    landed = _sign_in(http, _launch_url(site, "vera"), "vera")
    assert landed.status_code == 200 and "/review/app/" in landed.url
    assert http.get(f"{site.base}/review/api/session").json()["roles"] == ["viewer"]
    result_id = int(parse_qs(urlsplit(landed.url).query)["result"][0])
    decision = http.post(
        f"{site.base}/review/api/results/{result_id}/decision",
        json={"decision": "accepted"},
        headers={"X-Radloop-Review": "1"},
    )
    assert decision.status_code == 403 and "radiologist" in decision.json()["detail"]


def test_a_link_for_another_reviewer_is_refused(site: Site) -> None:
    http = requests.Session()
    _sign_in(http, f"{site.base}/auth/login?next=/review/worklist", "jdoe")
    other = http.get(_launch_url(site, "someone-else"), allow_redirects=False)
    assert other.status_code == 403 and "another reviewer" in other.text


# --------------------------------------------------------------------------- ID token checks


def _real_id_token(site: Site, client_id: str) -> tuple[str, str]:
    """An ID token the provider issues to ``client_id`` (code + PKCE, driven over HTTP) and its nonce."""
    http = requests.Session()
    verifier, nonce, state = secrets.token_urlsafe(48), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    start = requests.Request(
        "GET",
        f"{site.issuer}/auth",
        params={
            "client_id": client_id,
            "response_type": "code",
            "scope": "openid profile",
            "redirect_uri": f"{site.base}/auth/callback",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    ).prepare()
    assert start.url is not None
    form = http.get(start.url)
    action = re.search(r'action="([^"]+)"', form.text)
    assert action is not None
    back = http.post(
        requests.compat.urljoin(form.url, action.group(1)),
        data={"prompt": "login", "login": "jdoe", "password": "x"},
        allow_redirects=False,
    )
    while "code=" not in back.headers.get("location", ""):
        back = http.get(requests.compat.urljoin(back.url, back.headers["location"]), allow_redirects=False)
    code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
    tokens = requests.post(
        f"{site.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"{site.base}/auth/callback",
            "code_verifier": verifier,
        },
        auth=(client_id, CLIENT_SECRET),
        timeout=10,
    ).json()
    return str(tokens["id_token"]), nonce


def test_id_tokens_wrong_audience_expired_or_tampered_are_refused(site: Site) -> None:
    rp = OidcClient(OidcSettings(issuer=site.issuer, client_id="radloop", client_secret=CLIENT_SECRET))
    token, nonce = _real_id_token(site, "radloop")
    assert rp.verify_id_token(token, nonce).roles == ("radiologist",)  # the real thing passes
    with pytest.raises(LoginError, match="nonce"):
        rp.verify_id_token(token, "another-nonce")
    with pytest.raises(LoginError, match="expired"):
        rp.verify_id_token(token, nonce, now=time.time() + 3600)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_body = base64.urlsafe_b64encode(json.dumps({**claims, "roles": ["admin"]}).encode()).rstrip(b"=")
    with pytest.raises(LoginError, match="not valid"):
        rp.verify_id_token(f"{head}.{forged_body.decode()}.{sig}", nonce)
    flipped = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    with pytest.raises(LoginError, match="not valid"):
        rp.verify_id_token(f"{head}.{body}.{flipped}", nonce)
    other_token, other_nonce = _real_id_token(site, "other")  # issued to another client
    with pytest.raises(LoginError, match="(?i)not valid: audience"):
        rp.verify_id_token(other_token, other_nonce)


def test_login_logout_and_a_failed_login_are_audited(site: Site) -> None:
    """PS3.15 A.5.3.14 User Authentication: Login (110122), Logout (110123), a failure with outcome 4."""
    import xml.etree.ElementTree as ET

    from sqlmodel import Session, col, select

    from radloop.core.models import AuditMessage

    with Session(site.env.engine) as s:
        first = max([0, *s.exec(select(AuditMessage.id)).all()])  # type: ignore[type-var]
    http = requests.Session()
    landed = _sign_in(http, f"{site.base}/auth/login?next=/review/worklist", "jdoe")
    assert landed.status_code == 200, landed.text[:300]
    assert http.get(f"{site.base}/review/logout").status_code == 200
    assert http.get(f"{site.base}/review/api/session").status_code in (401, 403)  # the session is gone
    junk = requests.get(f"{site.base}/auth/callback", params={"code": "x", "state": "y"})
    assert 400 <= junk.status_code < 500
    with Session(site.env.engine) as s:
        rows = s.exec(
            select(AuditMessage).where(AuditMessage.event_id == "110114", col(AuditMessage.id) > first)
        ).all()
    seen = []
    for row in rows:
        root = ET.fromstring(row.xml)
        type_code = root.find("EventIdentification/EventTypeCode")
        assert type_code is not None
        seen.append((row.user, type_code.get("csd-code"), row.outcome))
    assert ("jdoe", "110122", 0) in seen and ("jdoe", "110123", 0) in seen
    assert ("unknown", "110122", 4) in seen


def test_single_sign_on_opens_the_operator_console(site: Site) -> None:
    """The console's "Sign in with single sign-on": the same sign-on, then a console session with
    the user's roles (a radiologist reads the console; its actions need the operator role)."""
    http = requests.Session()
    login = http.get(f"{site.base}/console/")
    assert login.url.startswith(f"{site.base}/console/login") and "/review/to-console" in login.text
    landed = _sign_in(http, f"{site.base}/auth/login?next=/review/to-console", "jdoe")
    assert landed.status_code == 200 and landed.url == f"{site.base}/console/", landed.url
    assert "<h1>Overview</h1>" in landed.text and "jdoe" in landed.text
    denied = http.post(f"{site.base}/console/api/jobs/1/retry", headers={"X-Radloop-Console": "1"})
    assert denied.status_code == 403 and "operator" in denied.json()["detail"]
