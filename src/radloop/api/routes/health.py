"""``/health`` (anonymous: for load balancers and probes) and ``/metrics`` (Prometheus, token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from radloop import services
from radloop.api.deps import Caller, Ctx
from radloop.api.problems import responses
from radloop.core import metrics
from radloop.core.read_models import Health

router = APIRouter(tags=["health"])
docs_router = APIRouter(include_in_schema=False)


@router.get("/health", response_model=Health)
def health(ctx: Ctx) -> Health:
    """Liveness and database reachability. The only endpoint that needs no token."""
    return services.health(ctx.engine)


@router.get(
    "/metrics",
    response_class=Response,
    responses=responses(ok={"content": {"text/plain": {}}, "description": "Prometheus text format"}),
)
def prometheus_metrics(ctx: Ctx, _caller: Caller) -> Response:
    """Prometheus metrics: instances received, jobs and deliveries by state, delivery failures, pulls."""
    return Response(metrics.render(ctx.metrics), media_type=metrics.CONTENT_TYPE)


@docs_router.get("/openapi.json")
def openapi(request: Request, _caller: Caller) -> dict[str, Any]:
    """The OpenAPI schema, for token holders (``api.public_docs: true`` serves it and /docs openly)."""
    schema: dict[str, Any] = request.app.openapi()
    return schema
