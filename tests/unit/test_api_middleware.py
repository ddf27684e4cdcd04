"""The API's limits and headers middleware on a small app: answer deadline, PHI headers."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from radloop.api import middleware, problems
from radloop.core.settings import ApiSettings

DEADLINE_S = 0.5


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    middleware.install(app, ApiSettings(request_timeout_s=DEADLINE_S, body_timeout_s=5))

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(5)
        return {"late": "yes"}

    @app.get("/slow-sync")
    def slow_sync() -> dict[str, str]:
        time.sleep(2)
        return {"late": "yes"}

    @app.get("/fast")
    def fast() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/cached")
    def cached() -> Response:
        return Response("x", headers={"Cache-Control": "private, max-age=60"})

    return app


def test_an_answer_not_started_in_time_is_a_503_problem() -> None:
    with TestClient(_app()) as client:
        for path in ("/slow", "/slow-sync"):
            started = time.monotonic()
            response = client.get(path)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, path
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "request_timeout_s" in response.json()["detail"]
            assert response.headers["connection"] == "close"
            assert elapsed < DEADLINE_S + 1.5, path
        assert client.get("/fast").status_code == 200


def test_answers_carry_no_store_and_nosniff() -> None:
    with TestClient(_app()) as client:
        for path in ("/fast", "/missing"):
            response = client.get(path)
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"
        cached = client.get("/cached")
        assert cached.headers["cache-control"] == "private, max-age=60"
        assert cached.headers["x-content-type-options"] == "nosniff"
