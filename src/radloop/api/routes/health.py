"""``/health`` (anonymous: for load balancers and probes) and ``/metrics`` (Prometheus, token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from radloop import services
from radloop.api.auth import PUBLIC, Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.core import metrics
from radloop.core.read_models import Health

router = APIRouter(tags=["health"])
docs_router = APIRouter(include_in_schema=False)


@router.get("/health", response_model=Health, dependencies=[PUBLIC])
def health(ctx: Ctx) -> Health:
    """Liveness and database reachability. The only endpoint that needs no token."""
    return services.health(ctx.engine)


@router.get(
    "/metrics",
    response_class=Response,
    responses=responses(ok={"content": {"text/plain": {}}, "description": "Prometheus text format"}),
)
def prometheus_metrics(ctx: Ctx, _caller: Viewer) -> Response:
    """Prometheus metrics: instances received, jobs and deliveries by state, delivery failures, pulls."""
    return Response(metrics.render(ctx.metrics), media_type=metrics.CONTENT_TYPE)


@docs_router.get("/openapi.json")
def openapi(request: Request, _caller: Viewer) -> dict[str, Any]:
    """The OpenAPI schema, for token holders (``api.public_docs: true`` serves it and /docs openly)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema


@docs_router.get("/docs")
def docs(_caller: Viewer) -> HTMLResponse:
    """The interactive API documentation (Swagger UI), for token holders.

    The page fetches ``/openapi.json``, which needs the token too: a browser has to send the
    ``Authorization`` header (or set ``api.public_docs: true``).
    """
    return get_swagger_ui_html(openapi_url="/openapi.json", title="radloop API")
