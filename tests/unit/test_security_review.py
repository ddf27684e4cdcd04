"""Issue 16, "found by a hostile test run" and roles: each finding's regression test.

Weak keys and ``config show`` live in ``test_settings.py``; here: roles on every route, token
roles, STOW-RS and the listener allowlist, review links (lifetime cap, one-time links, lower-case
signatures, aggregated anonymous denials), the Secure cookie behind a proxy, /docs, the revoked
token's 401 and owner-only files under data_dir.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

import review_env
from radloop import services
from radloop.api.app import create_app
from radloop.api.auth import declared_roles, iter_routes
from radloop.cli import app as cli
from radloop.core.models import AuditEvent
from radloop.core.roles import Role
from radloop.runtime import Runtime
from radloop.viewer_launch.routes import COOKIE
from radloop.viewer_launch.signing import (
    ReviewSession,
    encode_session,
    launch_key,
    session_key,
    sign_launch_query,
)

STRONG = "kqf-cqvFWfw9ew7J3WkVlrK3SIDVRT6OPQW8ZFPL9jY"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> review_env.ReviewEnv:
    return review_env.make_review_env(
        tmp_path_factory.mktemp("security"),
        t1_series_dir,
        n_results=1,
        secret_key=STRONG,
        review={"trusted_proxies": ["testclient"], "base_url": "http://radloop.example"},
        dicom={
            "listeners": [
                {"ae_title": "RADLOOP"},
                {"ae_title": "CLOSED", "allowed_callers": [{"ae_title": "MODALITY"}]},
                {"ae_title": "ROUTER_ONLY", "allowed_tokens": ["router"]},
            ]
        },
    )


@pytest.fixture(scope="module")
def app(env: review_env.ReviewEnv) -> FastAPI:
    return create_app(env.settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def _token(env: review_env.ReviewEnv, name: str, *roles: str) -> dict[str, str]:
    made = services.create_token(env.engine, name, list(roles) or ["viewer"])
    return {"Authorization": f"Bearer {made.token}"}


def _query(env: review_env.ReviewEnv, **kw: object) -> str:
    kw.setdefault("reviewer", "jdoe")
    kw.setdefault("issued_at", int(time.time()))
    return sign_launch_query(launch_key(env.settings), study=env.study_uid, **kw)  # type: ignore[arg-type]


def _denials(env: review_env.ReviewEnv) -> list[AuditEvent]:
    with Session(env.engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == "review.launch_denied")).all())


# --------------------------------------------------------------------------- roles


def test_every_route_and_page_declares_a_role(app: FastAPI) -> None:
    schema_paths = set(app.openapi()["paths"])
    routes = [r for r in iter_routes(app.routes) if getattr(r, "path", "")]
    assert len(routes) > 40
    missing = [(r.path, sorted(getattr(r, "methods", []))) for r in routes if not declared_roles(r)]
    assert missing == [], f"routes without a declared role: {missing}"
    # the schema's routes and the review pages (outside the schema) are among those walked
    walked = {r.path for r in routes}
    assert schema_paths <= walked
    assert {"/review/app/", "/review/worklist", "/review/quality", "/review/launch", "/docs"} <= walked


def test_token_roles_decide_what_a_token_may_do(client: TestClient, env: review_env.ReviewEnv) -> None:
    viewer = _token(env, "role-viewer", "viewer")
    radiologist = _token(env, "role-radiologist", "radiologist")
    steward = _token(env, "role-steward", "data-steward")
    operator = _token(env, "role-operator", "operator")
    export = {"name": "ds", "format": "msd"}
    assert client.get("/api/v1/studies", headers=viewer).status_code == 200
    assert client.get("/api/v1/studies", headers=radiologist).status_code == 200  # every role reads
    denied = client.post("/api/v1/exports", headers=radiologist, json=export)
    assert denied.status_code == 403 and "data-steward" in denied.json()["detail"]
    assert client.post("/api/v1/exports", headers=steward, json={}).status_code == 422  # past the role check
    assert client.post("/api/v1/jobs/1/retry", headers=viewer).status_code == 403
    assert client.post("/api/v1/jobs/1/retry", headers=steward).status_code == 403
    assert client.post("/api/v1/jobs/1/retry", headers=operator).status_code in (200, 409)
    body = {"reviewer": "jdoe", "study": env.study_uid}
    assert client.post("/api/v1/review-urls", headers=viewer, json=body).status_code == 403
    assert client.post("/api/v1/review-urls", headers=operator, json=body).status_code == 200


def test_cli_creates_tokens_with_roles_default_viewer(env: review_env.ReviewEnv, tmp_path: Path) -> None:
    cfg = tmp_path / "radloop.yaml"
    cfg.write_text(f"data_dir: {env.settings.data_dir}\nsecret_key: {STRONG}\n")
    runner = CliRunner()
    made = runner.invoke(cli, ["tokens", "create", "cli-default", "--config", str(cfg), "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["roles"] == "viewer"
    made = runner.invoke(
        cli,
        ["tokens", "create", "cli-ops", "--role", "operator", "--role", "data-steward", "--config", str(cfg)],
    )
    assert made.exit_code == 0 and "roles operator data-steward" in made.output, made.output
    bad = runner.invoke(cli, ["tokens", "create", "cli-bad", "--role", "superuser", "--config", str(cfg)])
    assert bad.exit_code != 0 and "unknown role 'superuser'" in str(bad.exception)


def test_a_viewer_session_cannot_decide(client: TestClient, env: review_env.ReviewEnv) -> None:
    result_id = next(iter(env.results))
    now = int(time.time())
    viewer = ReviewSession("s" * 32, "watcher", None, now, now + 600, roles=(Role.viewer.value,))
    client.cookies.set(
        COOKIE, encode_session(session_key(env.settings), viewer), domain="127.0.0.1", path="/review"
    )
    assert client.get("/review/api/session").json()["roles"] == ["viewer"]
    assert client.get("/review/worklist").status_code == 200
    decision = client.post(
        f"/review/api/results/{result_id}/decision",
        json={"decision": "accepted"},
        headers={"X-Radloop-Review": "1"},
    )
    assert decision.status_code == 403 and "radiologist" in decision.json()["detail"]


# --------------------------------------------------------------------------- STOW-RS allowlist


def test_stow_honours_the_listener_allowlist(client: TestClient, env: review_env.ReviewEnv) -> None:
    any_operator = _token(env, "stow-any", "operator")
    router = _token(env, "router", "operator")
    viewer = _token(env, "stow-viewer", "viewer")
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    empty = b"--b--\r\n"

    def stow(ae: str, auth: dict[str, str]) -> int:
        return client.post(
            f"/dicomweb/aets/{ae}/studies", headers={**auth, **headers}, content=empty
        ).status_code

    assert stow("RADLOOP", viewer) == 403  # storing needs the operator role
    assert stow("RADLOOP", any_operator) not in (401, 403)  # an open listener: any operator token
    assert stow("CLOSED", any_operator) == 403  # DIMSE allowlist set: STOW-RS closed too
    assert stow("CLOSED", router) == 403
    assert stow("ROUTER_ONLY", any_operator) == 403
    assert stow("ROUTER_ONLY", router) not in (401, 403)


# --------------------------------------------------------------------------- review links


def test_link_lifetime_is_capped(client: TestClient, env: review_env.ReviewEnv) -> None:
    now = int(time.time())
    far = client.get(f"/review/launch?{_query(env, issued_at=now, expires_at=99_999_999_999)}")
    assert far.status_code == 403 and "max_link_lifetime_s" in far.text
    day = client.get(f"/review/launch?{_query(env, issued_at=now, expires_at=now + 86_000)}")
    assert day.status_code == 303


def test_upper_case_signatures_are_refused(client: TestClient, env: review_env.ReviewEnv) -> None:
    query = _query(env)
    signed, sig = query.rsplit("&sig=", 1)
    assert client.get(f"/review/launch?{query}").status_code == 303
    assert client.get(f"/review/launch?{signed}&sig={sig.upper()}").status_code == 403


def test_one_time_links_open_one_session(client: TestClient, env: review_env.ReviewEnv) -> None:
    query = _query(env, nonce="n0nce-" + os.urandom(6).hex())
    assert client.get(f"/review/launch?{query}").status_code == 303
    again = client.get(f"/review/launch?{query}")
    assert again.status_code == 403 and "already used" in again.text
    operator = _token(env, "one-time-minter", "operator")
    body = {"reviewer": "jdoe", "study": env.study_uid, "one_time": True}
    url = client.post("/api/v1/review-urls", headers=operator, json=body).json()["url"]
    path = url.split("radloop.example", 1)[1]
    assert [client.get(path).status_code for _ in range(2)] == [303, 403]
    too_long = client.post("/api/v1/review-urls", headers=operator, json={**body, "ttl_s": 7 * 86400})
    assert too_long.status_code == 400 and "max_link_lifetime_s" in too_long.text
    reusable = _query(env)  # no nonce, review.one_time_links off: usable while valid
    assert [client.get(f"/review/launch?{reusable}").status_code for _ in range(2)] == [303, 303]


def test_one_time_setting_makes_every_link_single_use(env: review_env.ReviewEnv) -> None:
    settings = env.settings.model_copy(
        update={"review": env.settings.review.model_copy(update={"one_time_links": True})}
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1", follow_redirects=False) as c:
        query = _query(env, issued_at=int(time.time()) - 1)
        assert [c.get(f"/review/launch?{query}").status_code for _ in range(2)] == [303, 403]


def test_anonymous_junk_launches_are_aggregated(client: TestClient, env: review_env.ReviewEnv) -> None:
    before = len(_denials(env))
    for i in range(100):
        assert client.get(f"/review/launch?reviewer=x&ts={i}&sig={'0' * 64}").status_code == 403
    rows = _denials(env)[before:]
    assert 1 <= len(rows) <= 2  # one per reason per review.denied_audit_interval_s (60 s)
    assert all(json.loads(r.detail)["reason"] == "bad-signature" for r in rows)


def test_session_cookie_secure_behind_a_trusted_proxy(app: FastAPI, env: review_env.ReviewEnv) -> None:
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        plain = c.get(f"/review/launch?{_query(env)}")
        assert "secure" not in plain.headers["set-cookie"].lower()
        proxied = c.get(f"/review/launch?{_query(env)}", headers={"X-Forwarded-Proto": "https"})
        assert "; secure" in proxied.headers["set-cookie"].lower()
    settings = env.settings.model_copy(
        update={"review": env.settings.review.model_copy(update={"trusted_proxies": []})}
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1", follow_redirects=False) as c:
        untrusted = c.get(f"/review/launch?{_query(env)}", headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in untrusted.headers["set-cookie"].lower()
    https_base = env.settings.review.model_copy(update={"base_url": "https://radloop.example"})
    with TestClient(
        create_app(env.settings.model_copy(update={"review": https_base})),
        base_url="http://127.0.0.1",
        follow_redirects=False,
    ) as c:
        assert "; secure" in c.get(f"/review/launch?{_query(env)}").headers["set-cookie"].lower()


# --------------------------------------------------------------------------- docs, 401


def test_docs_with_a_token_and_revoked_tokens_are_not_named(
    client: TestClient, env: review_env.ReviewEnv
) -> None:
    auth = _token(env, "docs-reader")
    assert client.get("/docs").status_code == 401
    docs = client.get("/docs", headers=auth)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert client.get("/openapi.json", headers=auth).json()["info"]["title"] == "radloop"
    secret_name = "ward-7-night-router"
    revoked = _token(env, secret_name)
    services.revoke_token(env.engine, secret_name)
    answer = client.get("/api/v1/studies", headers=revoked)
    assert answer.status_code == 401 and secret_name not in answer.text


# --------------------------------------------------------------------------- PHI on disk


def test_everything_under_data_dir_is_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        data.mkdir(mode=0o755)
        (data / "radloop.db").touch(mode=0o644)  # made before the fix: tightened at start
        from radloop.core.settings import load_settings

        runtime = Runtime.build(load_settings(None, data_dir=str(data), secret_key=STRONG), migrate=True)
        services.create_token(runtime.engine, "perm-check")  # a write: -wal and -shm appear
        (data / "instances" / "1.2" / "3.4").mkdir(parents=True)
        (data / "instances" / "1.2" / "3.4" / "5.dcm").write_bytes(b"x")
        bad = []
        for path in [data, *data.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                bad.append((str(path.relative_to(tmp_path)), oct(mode)))
        assert bad == []
        assert {"radloop.db", "radloop.db-wal", "radloop.db-shm"} <= {p.name for p in data.iterdir()}
    finally:
        os.umask(old)
