"""The REST API: a property-based check against its OpenAPI schema, and token authentication.

In process: ``create_app(settings)`` on a temporary SQLite database, called through
Starlette's TestClient (and schemathesis's ASGI transport). The data behind it is real: a
synthetic CT stored by STOW-RS (routed, unmatched) and the shared T1 series stored by STOW-RS
on the brain AE (its job stays queued: no executor runs here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import peers
from radloop import services
from radloop.api import create_app
from radloop.connector.dicomweb.multipart import new_boundary, write_parts
from radloop.core.settings import load_settings

BRAIN_AE = "RADLOOP_BRAIN"
EXAMPLES = 20  # per operation and mode: ~35 operations × 2 modes take ~40 s
REVIEW_PREFIX = "/review"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app over a fresh data folder and database."""
    data = tmp_path_factory.mktemp("api")
    s = load_settings(
        data_dir=str(data / "data"),
        dicom={
            "min_free_bytes": 0,
            "listeners": [{"ae_title": "RADLOOP"}, {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"]}],
        },
    )
    return create_app(s)


@pytest.fixture(scope="module")
def token(app: FastAPI) -> str:
    return services.create_token(app.state.radloop.engine, "api-tests", ["admin"]).token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stow(client: TestClient, token: str, files: list[Path], ae: str) -> Any:
    """STOW-RS ``files`` (one request) to the virtual AE ``ae``; returns the response."""
    boundary = new_boundary()
    body = b"".join(write_parts((("application/dicom", f.read_bytes()) for f in files), boundary))
    headers = {
        **_auth(token),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    return client.post(f"/dicomweb/aets/{ae}/studies", content=body, headers=headers)


@pytest.fixture(scope="module")
def seeded(
    app: FastAPI, token: str, tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path
) -> FastAPI:
    """The app with a routed CT study and a queued brain job."""
    ct = peers.make_synthetic_ct_series(tmp_path_factory.mktemp("ct"), n=4, rows=64, cols=64)
    with TestClient(app) as client:
        assert stow(client, token, ct, "RADLOOP").status_code == 200
        assert stow(client, token, sorted(t1_series_dir.iterdir()), BRAIN_AE).status_code == 200
    return app


@pytest.fixture(scope="module")
def api_schema(seeded: FastAPI, token: str) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", seeded, headers=_auth(token))


def _operations(app: FastAPI, token: str) -> Iterator[tuple[str, str]]:
    with TestClient(app) as client:
        paths = client.get("/openapi.json", headers=_auth(token)).json()["paths"]
    for path, methods in paths.items():
        for method in methods:
            concrete = (
                path.replace("{job_id}", "1")
                .replace("{delivery_id}", "1")
                .replace("{study}", "1.2.3")
                .replace("{series}", "1.2.3.4")
                .replace("{sop}", "1.2.3.4.5")
                .replace("{frames}", "1")
                .replace("{tag}", "7FE00010")
                .replace("{name}", "x")
                .replace("{ae_title}", BRAIN_AE)
                .replace("{study_instance_uid}", "1.2.3")
                .replace("{series_instance_uid}", "1.2.3.4")
            )
            yield method.upper(), concrete


def test_every_operation_but_health_needs_a_valid_token(seeded: FastAPI, token: str) -> None:
    engine = seeded.state.radloop.engine
    revoked = services.create_token(engine, "to-revoke").token
    services.revoke_token(engine, "to-revoke")
    operations = [*_operations(seeded, token), ("GET", "/openapi.json"), ("GET", "/metrics")]
    assert len(operations) > 25
    with TestClient(seeded) as client:
        for method, path in operations:
            if path == "/health":
                assert client.request(method, path).status_code == 200
                continue
            if path.startswith(REVIEW_PREFIX):  # review app: signed launch URL → session cookie, not tokens
                assert client.request(method, path).status_code in (401, 403), (method, path)
                continue
            for headers in ({}, _auth("rl_not-a-token"), _auth(revoked), {"Authorization": f"Basic {token}"}):
                r = client.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/api/v1/jobs", headers=_auth(token)).status_code == 200


def test_tokens_are_stored_hashed_and_revocable(app: FastAPI) -> None:
    engine = app.state.radloop.engine
    made = services.create_token(engine, "hash-check")
    listed = [t.model_dump() for t in services.list_tokens(engine) if t.name == "hash-check"]
    assert listed and "token" not in listed[0] and "token_hash" not in listed[0]
    assert made.token not in str(services.list_tokens(engine))
    with TestClient(app) as client:
        assert client.get("/api/v1/studies", headers=_auth(made.token)).status_code == 200
        services.revoke_token(engine, "hash-check")
        r = client.get("/api/v1/studies", headers=_auth(made.token))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_jobs_filter_cancel_retry_and_series_routing(seeded: FastAPI, token: str) -> None:
    with TestClient(seeded) as client:
        h = _auth(token)
        queued = client.get(
            "/api/v1/jobs", params={"state": "queued", "pipeline": "brain-extraction"}, headers=h
        )
        (job,) = queued.json()
        assert job["series_instance_uid"]
        cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h)
        assert (
            again.status_code == 409 and again.json()["detail"] == "a cancelled job cannot become cancelled"
        )
        retried = client.post(f"/api/v1/jobs/{job['id']}/retry", headers=h)
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        detail = client.get(f"/api/v1/jobs/{job['id']}", headers=h).json()
        assert detail["steps"] == [] and detail["results"] == []
        unmatched = client.get("/api/v1/series", params={"routing_status": "unmatched"}, headers=h).json()
        assert [s["modality"] for s in unmatched] == ["CT"]
        assert "Modality CT not in ['MR']" in unmatched[0]["routing_note"]
        study = client.get(f"/api/v1/studies/{job['study_instance_uid']}", headers=h).json()
        assert [j["id"] for j in study["jobs"]] == [job["id"]]
        metrics = client.get("/metrics", headers=h).text
        assert "radloop_instances_received_total 174.0" in metrics
        assert 'radloop_jobs{state="queued"} 1.0' in metrics


def test_stow_the_t1_series_is_one_series_of_170(seeded: FastAPI, token: str, t1_series_dir: Path) -> None:
    first = pydicom.dcmread(next(iter(sorted(t1_series_dir.iterdir()))), stop_before_pixels=True)
    with TestClient(seeded) as client:
        series = client.get(f"/api/v1/series/{first.SeriesInstanceUID}", headers=_auth(token)).json()
    assert (
        series["instance_count"] == 170 and series["state"] == "complete" and series["called_ae"] == BRAIN_AE
    )
    assert series["calling_ae"] == "api-tests"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_operations_never_fail_with_a_server_error(
    api_schema: Any, token: str, mode: GenerationMode
) -> None:
    """Hypothesis, driven by the OpenAPI schema (schemathesis's strategies), against every operation:
    valid requests get documented answers of the documented shape; invalid ones are refused; none
    gets a 5xx. STOW-RS bodies (multipart DICOM the generator cannot make) are only checked for 5xx."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 25
    fuzzed = sum(_fuzz(operation, token, mode) for operation in operations)
    assert fuzzed >= (len(operations) if mode == GenerationMode.POSITIVE else 15)


def _fuzz(operation: Any, token: str, mode: GenerationMode) -> bool:
    """Run the examples for one operation; False if it has nothing to make invalid (no parameters)."""
    stow_op = operation.method.upper() == "POST" and operation.path.startswith("/dicomweb/")
    other_auth = operation.path.startswith(REVIEW_PREFIX)  # no token there: only "no 5xx" is checked
    checks = [not_a_server_error]
    if mode == GenerationMode.POSITIVE and not stow_op and not other_auth:
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=_auth(token), checks=checks, excluded_checks=[negative_data_rejection])

    try:
        run()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE, operation.label
        return False
    return True
