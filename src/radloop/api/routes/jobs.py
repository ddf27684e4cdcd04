"""``/api/v1/jobs`` and ``/api/v1/deliveries``: pipeline runs and the outbox, with user actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from radloop import services
from radloop.api.auth import Operator, Viewer
from radloop.api.deps import Ctx, RowId
from radloop.api.problems import responses
from radloop.core.models import DeliveryState, JobState
from radloop.core.read_models import DeliveryOut, JobDetail, JobOut

router = APIRouter(prefix="/api/v1", tags=["jobs"])
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows.")]


@router.get("/jobs", response_model=list[JobOut], responses=responses(422))
def list_jobs(
    ctx: Ctx, _caller: Viewer, state: JobState | None = None, pipeline: str | None = None, limit: Limit = 100
) -> list[JobOut]:
    """Jobs, newest first; filter by ``state`` and ``pipeline``."""
    return services.list_jobs(ctx.engine, state and state.value, pipeline, limit)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=responses(404, 422))
def get_job(job_id: RowId, ctx: Ctx, _caller: Viewer) -> JobDetail:
    """One job: state and error, per-operator timings and logs (``steps``), and results."""
    return services.get_job(ctx.engine, job_id)


@router.get(
    "/jobs/{job_id}/logs",
    response_class=PlainTextResponse,
    responses=responses(
        404, 422, ok={"content": {"text/plain": {}}, "description": "The operators' log lines"}
    ),
)
def job_logs(job_id: RowId, ctx: Ctx, _caller: Viewer) -> str:
    """The log lines of every operator of the job, attempt by attempt."""
    return services.job_logs(ctx.engine, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=responses(404, 409, 422))
def cancel_job(job_id: RowId, ctx: Ctx, _caller: Operator) -> JobOut:
    """Cancel a queued or running job (a running one stops at its next operator)."""
    return services.cancel_job(ctx.engine, job_id)


@router.post("/jobs/{job_id}/retry", response_model=JobOut, responses=responses(404, 409, 422))
def retry_job(job_id: RowId, ctx: Ctx, _caller: Operator) -> JobOut:
    """Re-queue a failed, cancelled or succeeded job now."""
    return services.retry_job(ctx.engine, job_id, ctx.settings.workers.max_attempts)


@router.get("/deliveries", response_model=list[DeliveryOut], responses=responses(422))
def list_deliveries(
    ctx: Ctx, _caller: Viewer, state: DeliveryState | None = None, limit: Limit = 100
) -> list[DeliveryOut]:
    """Outbox rows (result × destination), newest first, with attempts and the last error."""
    return services.list_deliveries(ctx.engine, state and state.value, limit)


@router.post(
    "/deliveries/{delivery_id}/retry", response_model=DeliveryOut, responses=responses(404, 409, 422)
)
def retry_delivery(delivery_id: RowId, ctx: Ctx, _caller: Operator) -> DeliveryOut:
    """Send a pending, failed or dismissed delivery again now."""
    return services.retry_delivery(ctx.engine, delivery_id)


@router.post(
    "/deliveries/{delivery_id}/dismiss", response_model=DeliveryOut, responses=responses(404, 409, 422)
)
def dismiss_delivery(delivery_id: RowId, ctx: Ctx, _caller: Operator) -> DeliveryOut:
    """Stop retrying a delivery (it stays listed as dismissed)."""
    return services.dismiss_delivery(ctx.engine, delivery_id)
