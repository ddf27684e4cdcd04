"""``/api/v1/studies`` and ``/api/v1/series``: what radloop received and what routing made of it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from radloop import services
from radloop.api.auth import Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.core.models import RoutingStatus, SeriesState
from radloop.core.read_models import SeriesDetail, SeriesOut, StudyDetail, StudyOut

router = APIRouter(prefix="/api/v1", tags=["studies"])
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows.")]


@router.get("/studies", response_model=list[StudyOut], responses=responses(422))
def list_studies(ctx: Ctx, _caller: Viewer, limit: Limit = 100) -> list[StudyOut]:
    """Studies, newest first, with their series (state, instances, routing outcome)."""
    return services.list_studies(ctx.engine, limit)


@router.get("/studies/{study_instance_uid}", response_model=StudyDetail, responses=responses(404))
def get_study(study_instance_uid: str, ctx: Ctx, _caller: Viewer) -> StudyDetail:
    """One study, its series and the jobs run on them."""
    return services.get_study(ctx.engine, study_instance_uid)


@router.get("/series", response_model=list[SeriesOut], responses=responses(422))
def list_series(
    ctx: Ctx,
    _caller: Viewer,
    state: SeriesState | None = None,
    routing_status: RoutingStatus | None = None,
    limit: Limit = 100,
) -> list[SeriesOut]:
    """Series, newest first; filter by assembly ``state`` and ``routing_status``."""
    return services.list_series(
        ctx.engine, state and state.value, routing_status and routing_status.value, limit
    )


@router.get("/series/{series_instance_uid}", response_model=SeriesDetail, responses=responses(404))
def get_series(series_instance_uid: str, ctx: Ctx, _caller: Viewer) -> SeriesDetail:
    """One series and its jobs."""
    return services.get_series(ctx.engine, series_instance_uid)
