"""The operator console's pages over a real app and database (no browser): sign-in and roles,
study search with server-side pages, the overview's counters and alerts, live updates with
ETags, a broken pipeline file's error with file, line and field, the job timeline against
`radloop jobs show`, the review-app and sign-on bridges, the job duration histogram, and the
Grafana dashboard against the metrics radloop exports.

The browser end-to-end (real server, Orthanc, Chromium) is `test_console_browser.py`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select
from typer.testing import CliRunner

import console_data
from radloop import services
from radloop.api.app import create_app
from radloop.cli import app as cli
from radloop.console.auth import COOKIE
from radloop.core.metrics import registry_for
from radloop.core.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    JobStep,
    Result,
    Series,
    utcnow,
)
from radloop.core.settings import Settings, load_settings
from radloop.runtime import Runtime
from radloop.viewer_launch.routes import COOKIE as REVIEW_COOKIE
from radloop.viewer_launch.signing import ReviewSession, encode_session, session_key

N_STUDIES = 60
REPO = Path(__file__).resolve().parents[2]
BROKEN = """\
name: broken-brain
version: 1.0.0
match:
  modality: [MR]
operators:
  - id: volume
    use: dicom.series_to_volume
    inputs: {series: input.series}
  - id: brain
    use: deepbet.brain_extraction
    inputs:
      volume: input.series
"""


class Env:
    def __init__(self, settings: Settings, runtime: Runtime, app: FastAPI, pipelines: Path) -> None:
        self.settings, self.runtime, self.app, self.pipelines = settings, runtime, app, pipelines
        self.tokens: dict[str, str] = {}

    @property
    def engine(self) -> Any:
        return self.runtime.engine

    def token(self, role: str) -> str:
        if role not in self.tokens:
            self.tokens[role] = services.create_token(self.engine, f"console-{role}", [role]).token
        return self.tokens[role]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    work = tmp_path_factory.mktemp("console")
    pipelines = work / "pipelines"
    pipelines.mkdir()
    settings = load_settings(
        None,
        data_dir=str(work / "data"),
        pipelines={"dirs": [str(pipelines)]},
        destinations=[
            {"kind": "folder", "name": "archive", "path": str(work / "archive")},
            {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": 9, "ae_title": "PACS"},
        ],
        sources=[
            {
                "name": "pacs-web",
                "kind": "dicomweb",
                "url": "http://127.0.0.1:9/dicom-web",  # nothing listens: every poll fails
                "listener_ae_title": "RADLOOP",
                "timeout_s": 5,
            }
        ],
    )
    runtime = Runtime.build(settings, migrate=True)
    console_data.store_studies(runtime.store, N_STUDIES)
    return Env(settings, runtime, create_app(runtime), pipelines)


@pytest.fixture
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(env.app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def _login(client: TestClient, env: Env, role: str = "operator") -> None:
    answer = client.post("/console/login", data={"token": env.token(role), "next": "/console/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/", answer.text
    assert COOKIE in client.cookies


def _job(env: Env, state: JobState, error: str = "", steps: tuple[tuple[str, float], ...] = ()) -> int:
    """A job on the first series with ``steps`` (operator id, seconds) run one after another."""
    with Session(env.engine) as s:
        series = s.exec(select(Series)).first()
        assert series is not None and series.id is not None
        now = utcnow()
        job = Job(
            pipeline="brain-extraction",
            pipeline_version="1.0.0",
            series_id=series.id,
            series_instance_uid=series.series_instance_uid,
            state=state,
            attempts=1,
            error=error,
            idempotency_key=f"test-{time.perf_counter_ns()}",
            started_at=now - timedelta(seconds=sum(d for _, d in steps) + 1),
            finished_at=now if state in (JobState.succeeded, JobState.failed) else None,
        )
        s.add(job)
        s.flush()
        assert job.id is not None
        t = job.started_at
        assert t is not None
        for operator_id, seconds in steps:
            s.add(
                JobStep(
                    job_id=job.id,
                    attempt=1,
                    operator_id=operator_id,
                    operator=f"test.{operator_id}",
                    state="succeeded",
                    started_at=t,
                    duration_s=seconds,
                    log=f"{operator_id} ran",
                )
            )
            t += timedelta(seconds=seconds)
        s.commit()
        return job.id


# --------------------------------------------------------------------------- sign-in and roles


def test_pages_need_a_session_and_actions_the_operator_role(client: TestClient, env: Env) -> None:
    answer = client.get("/console/jobs?state=failed")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Fjobs%3Fstate%3Dfailed"
    assert client.post("/console/api/jobs/1/retry", headers={"X-Radloop-Console": "1"}).status_code == 401
    bad = client.post("/console/login", data={"token": "not-a-token"})
    assert bad.status_code == 401 and "unknown API token" in bad.text
    assert (
        client.post("/console/login", data={"token": env.token("viewer"), "next": "//evil"}).headers[
            "location"
        ]
        == "/console/"
    )
    assert client.get("/console/").status_code == 200
    job_id = _job(env, JobState.failed, "bad input")
    denied = client.post(f"/console/api/jobs/{job_id}/retry", headers={"X-Radloop-Console": "1"})
    assert denied.status_code == 403 and "operator" in denied.json()["detail"]
    _login(client, env, "operator")
    assert client.post(f"/console/api/jobs/{job_id}/retry").status_code == 403  # no console header
    done = client.post(f"/console/api/jobs/{job_id}/retry", headers={"X-Radloop-Console": "1"})
    assert done.status_code == 200 and done.json()["state"] == "queued"
    again = client.post(f"/console/api/jobs/{job_id}/cancel", headers={"X-Radloop-Console": "1"})
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    conflict = client.post(f"/console/api/jobs/{job_id}/cancel", headers={"X-Radloop-Console": "1"})
    assert conflict.status_code == 409  # the same rule as the REST API: a cancelled job stays so
    with Session(env.engine) as s:
        actions = {a.action for a in s.exec(select(AuditEvent).where(AuditEvent.actor == "console-operator"))}
    assert {"console.login", "console.job.retry", "console.job.cancel"} <= actions


# --------------------------------------------------------------------------- studies


def _rows(html: str, cls: str) -> int:
    table = re.search(rf"<table class='{cls}'>.*?</table>", html, re.DOTALL)
    assert table is not None, html[:2000]
    return len(re.findall(r"<tr><td><a ", table.group(0)))  # rows with a link (not the header, not "none")


def test_study_search_pages_and_filters(client: TestClient, env: Env) -> None:
    _login(client, env, "viewer")
    first = client.get("/console/studies")
    assert first.status_code == 200 and float(first.headers["server-timing"].split("dur=")[1]) > 0
    assert _rows(first.text, "studies") == 50 and f"1–50 of {N_STUDIES}" in first.text
    assert "Console^Patient00059" in first.text  # newest first
    second = client.get("/console/studies?offset=50")
    assert _rows(second.text, "studies") == N_STUDIES - 50 and "Console^Patient00000" in second.text
    cases = {
        "patient=patient00007": 1,  # part of the name, any case
        "patient=PID0001": 10,  # start of the patient ID
        "accession=ACC00004": 10,
        "modality=ct": N_STUDIES // 4,
        "ae=RADLOOP_BRAIN": N_STUDIES // 3,
        "modality=MR&ae=RADLOOP_BRAIN": 5,
        "date_from=20260101&date_to=20260131": 5,
        "patient=%25": 0,  # a LIKE wildcard is matched literally
    }
    for query, expected in cases.items():
        found = services.search_studies(
            env.engine, **dict(kv.split("=") for kv in query.replace("%25", "%").split("&"))
        )  # type: ignore[arg-type]
        assert found.total == expected, query
        page = client.get(f"/console/studies?{query}")
        assert page.status_code == 200 and _rows(page.text, "studies") == expected, query


# --------------------------------------------------------------------------- overview, live


def test_overview_counts_and_alerts(client: TestClient, env: Env) -> None:
    _login(client, env, "viewer")
    before = services.overview(env.settings, env.engine, "hour")
    assert before.instances_received == N_STUDIES and sum(b.instances for b in before.buckets) == N_STUDIES
    job_id = _job(env, JobState.failed, "model 'ct_organs' is not in the model store")
    with Session(env.engine) as s:
        result = Result(kind="SEG", sop_instance_uid=f"1.2.3.{job_id}", job_id=job_id, path="x.dcm")
        s.add(result)
        s.flush()
        assert result.id is not None
        s.add(
            Delivery(
                result_id=result.id,
                destination="pacs",
                attempts=2,
                last_error="association with PACS@127.0.0.1:9 refused",
            )
        )
        s.add(
            Delivery(result_id=result.id, destination="archive", state=DeliveryState.sent, sent_at=utcnow())
        )
        s.commit()
    after = services.overview(env.settings, env.engine, "hour")
    assert after.buckets[-1].deliveries_sent == 1 and sum(b.deliveries_sent for b in after.buckets) == 1
    page = client.get("/console/?window=day")
    assert page.status_code == 200
    assert "data-kind='failed-jobs'" in page.text and "data-kind='destination-down'" in page.text
    assert "destination pacs is down: 1 pending" in page.text
    assert "data-destination='pacs' data-down='1'" in page.text
    assert re.search(r"data-counter='instances_received'><b>(\d+)</b>", page.text).group(1) == str(N_STUDIES)  # type: ignore[union-attr]
    assert client.get("/console/?window=week").status_code == 422


def test_live_part_answers_304_until_something_changes(client: TestClient, env: Env) -> None:
    _login(client, env, "viewer")
    live = {"X-Console-Live": "1"}
    first = client.get("/console/jobs", headers=live)
    assert first.status_code == 200 and not first.text.startswith("<!doctype")  # the live part only
    etag = first.headers["etag"]
    same = client.get("/console/jobs", headers={**live, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    _job(env, JobState.queued)
    changed = client.get("/console/jobs", headers={**live, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_poll_now_shows_the_last_polls_outcome(client: TestClient, env: Env) -> None:
    _login(client, env, "operator")
    before = client.get("/console/sources")
    assert before.status_code == 200 and "data-source='pacs-web'" in before.text
    polled = client.post("/console/api/sources/pacs-web/poll", headers={"X-Radloop-Console": "1"})
    assert polled.status_code == 502, polled.text  # the PACS is unreachable: said, not hidden
    page = client.get("/console/sources")
    row = page.text.split("data-source='pacs-web'")[1].split("</tr>")[0]
    assert "127.0.0.1:9" in row and "<td>1</td>" in row  # one poll, its error shown
    cursor = services.list_sources(env.settings, env.engine)[0].cursor
    assert (
        cursor is not None
        and cursor.last_error
        and cursor.last_error[:40] in page.text.replace("&#x27;", "'")
    )


def test_study_and_models_pages(client: TestClient, env: Env) -> None:
    _login(client, env, "viewer")
    study = services.search_studies(env.engine, patient="Patient00003").items[0]
    page = client.get(f"/console/studies/{study.study_instance_uid}")
    assert page.status_code == 200 and "series 3" in page.text and "RADLOOP" in page.text
    assert client.get("/console/studies/1.2.3.4").status_code == 404
    models = client.get("/console/models")
    assert models.status_code == 200 and "data-model='deepbet_mask'" in models.text
    assert "data-model='ct_organs'" in models.text and "missing" in models.text


# --------------------------------------------------------------------------- pipelines


def test_a_broken_pipeline_file_shows_its_error_with_file_line_and_field(
    client: TestClient, env: Env, tmp_path: Path
) -> None:
    _login(client, env, "viewer")
    broken = env.pipelines / "broken.yaml"
    broken.write_text(BROKEN)  # after the server started: a file someone is editing
    try:
        page = client.get("/console/pipelines")
    finally:
        broken.unlink()
    assert page.status_code == 200
    (tmp_path / "b.yaml").write_text(BROKEN)
    cli_said = CliRunner().invoke(cli, ["pipelines", "validate", str(tmp_path / "b.yaml")])
    expected = str(cli_said.exception).replace(str(tmp_path / "b.yaml"), str(broken))
    assert expected.startswith(f"{broken}:12: operators[1].inputs.volume: type mismatch")
    assert re.sub(r"<[^>]+>", "", page.text.replace("&#x27;", "'")).count(expected) >= 1, expected
    assert "data-line='12' data-field='operators[1].inputs.volume'" in page.text
    assert "<span class=marked><i> 12</i>       volume: input.series" in page.text
    # the valid reference pipelines are drawn: nodes and edges of brain-extraction
    section = page.text.split("<h2>brain-extraction</h2>")[1].split("</section>")[0]
    assert all(f"data-node='{n}'" in section for n in ("input.series", "volume", "brain", "seg"))
    assert section.count("<line ") == 3


# --------------------------------------------------------------------------- jobs


def test_job_page_timeline_matches_jobs_show(client: TestClient, env: Env) -> None:
    _login(client, env, "viewer")
    job_id = _job(env, JobState.succeeded, steps=(("volume", 0.812), ("brain", 5.3456), ("seg", 0.25)))
    shown = CliRunner().invoke(
        cli, ["jobs", "show", str(job_id), "--json"], env={"RADLOOP_DATA_DIR": str(env.settings.data_dir)}
    )
    assert shown.exit_code == 0, shown.output
    steps = json.loads(shown.output)["steps"]
    page = client.get(f"/console/jobs/{job_id}")
    assert page.status_code == 200
    for step in steps:
        m = re.search(
            rf"data-operator='{step['operator_id']}' data-duration-s='([0-9.]+)'"
            r".*?<span class=duration>([0-9.]+) s",
            page.text,
        )
        assert m is not None, step
        assert float(m.group(1)) == step["duration_s"] and m.group(2) == f"{step['duration_s']:.2f}"
    assert "brain ran" in page.text  # the logs


def test_results_open_in_the_review_app_as_the_console_user(client: TestClient, env: Env) -> None:
    _login(client, env, "operator")
    job_id = _job(env, JobState.succeeded, steps=(("seg", 1.0),))
    with Session(env.engine) as s:
        result = Result(kind="SEG", sop_instance_uid=f"1.2.4.{job_id}", job_id=job_id, path="x.dcm")
        s.add(result)
        s.commit()
        result_id = result.id
    page = client.get(f"/console/jobs/{job_id}")
    assert (
        f"href='/console/review/{result_id}' data-review-app='/review/app/?result={result_id}'" in page.text
    )
    opened = client.get(f"/console/review/{result_id}")
    assert opened.status_code == 303 and opened.headers["location"] == f"/review/app/?result={result_id}"
    app_page = client.get(f"/review/app/?result={result_id}")
    assert app_page.status_code == 200 and "<script" in app_page.text  # the review app itself
    session = client.get("/review/api/session").json()
    assert session["reviewer"] == "console-operator" and session["result_id"] == result_id


def test_single_sign_on_session_opens_the_console(client: TestClient, env: Env) -> None:
    now = int(time.time())

    def review_cookie(login: str) -> str:
        session = ReviewSession("s1", "dr.sso", None, now, now + 600, ("operator",), login)
        return encode_session(session_key(env.settings), session)

    client.cookies.set(REVIEW_COOKIE, review_cookie("oidc"), path="/review")
    answer = client.get("/review/to-console")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    assert client.get("/console/").status_code == 200
    client.cookies.clear()
    client.cookies.set(REVIEW_COOKIE, review_cookie(""), path="/review")  # a PACS link's session
    refused = client.get("/review/to-console")
    assert refused.status_code == 303 and refused.headers["location"] == "/console/login"
    # the console cookie is no review session, nor the other way round
    client.cookies.clear()
    client.cookies.set(COOKIE, review_cookie("oidc"), path="/console")
    assert client.get("/console/").status_code == 303


# --------------------------------------------------------------------------- metrics and Grafana


def test_metrics_export_job_duration_histograms_per_pipeline(env: Env) -> None:
    _job(env, JobState.succeeded, steps=(("seg", 3.0),))
    exposition = _exposition(env)
    bucket = 'radloop_job_duration_seconds_bucket{le="5.0",pipeline="brain-extraction",state="succeeded"}'
    assert re.search(re.escape(bucket) + " [1-9]", exposition), exposition
    assert "radloop_series_completed_total" in exposition


def _exported_names(env: Env) -> set[str]:
    """Every sample name radloop's registry can export (a family's name with its type's suffixes)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("_count", "_sum", ""),
    }
    names = set()
    for family in registry_for(env.engine).collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_grafana_dashboard_names_only_metrics_radloop_exports(env: Env) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "radloop.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 6
    exported = _exported_names(env)
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\bradloop_[a-z_]+\b", expr))
        assert names, f"no radloop metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {sorted(names - exported)}, not exported"
        used |= names
    # the panels: throughput, queue depth, job duration per pipeline, delivery failures
    assert {
        "radloop_instances_received_total",
        "radloop_jobs",
        "radloop_job_duration_seconds_bucket",
        "radloop_delivery_failures_total",
    } <= used
    # and the names really are in /metrics' text format
    families = {f.name for f in text_string_to_metric_families(_exposition(env))}
    assert "radloop_job_duration_seconds" in families


def _exposition(env: Env) -> str:
    from radloop.core.metrics import render

    return render(registry_for(env.engine)).decode()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_runtime(tmp_path: Path) -> Iterator[Runtime]:
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"radloop_console_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required (user postgres, trust auth): {e}")
    try:
        settings = load_settings(
            None,
            data_dir=str(tmp_path),
            database={"url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"},
        )
        runtime = Runtime.build(settings, migrate=True)
        yield runtime
        runtime.engine.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_overview_and_search_on_postgresql(pg_runtime: Runtime) -> None:
    console_data.store_studies(pg_runtime.store, 12)
    o = services.overview(pg_runtime.settings, pg_runtime.engine, "hour")
    assert o.instances_received == 12 and o.buckets[-1].instances == 12
    assert services.overview(pg_runtime.settings, pg_runtime.engine, "day").buckets[-1].instances == 12
    engine = pg_runtime.engine
    assert services.search_studies(engine, patient="PATIENT00007").total == 1  # ILIKE: any case
    assert services.search_studies(engine, modality="ct", ae="RADLOOP").total == 1  # studies 0
    assert services.search_studies(engine, accession="ACC00001").total == 2  # 10, 11
    page = services.search_studies(engine, limit=5, offset=5)
    assert page.total == 12 and len(page.items) == 5 and all(len(st.series) == 1 for st in page.items)


def test_every_console_route_declares_its_role(env: Env) -> None:
    from radloop.api.auth import declared_roles, iter_routes

    routes = [
        r
        for r in iter_routes(env.app.routes)
        if getattr(r, "path", "").startswith(("/console", "/review/to-"))
    ]
    assert len(routes) >= 18
    roles = {(r.path, tuple(sorted(getattr(r, "methods", [])))): declared_roles(r) for r in routes}
    assert all(roles.values()), [k for k, v in roles.items() if not v]
    public = {path for (path, _), found in roles.items() if any(x.role is None for x in found)}
    assert public == {"/console/login", "/console/logout", "/console/static/{name}"}
    actions = {path: found for (path, methods), found in roles.items() if "/console/api/" in path}
    assert actions and all(
        x.role is not None and x.role.value == "operator" for f in actions.values() for x in f
    )
