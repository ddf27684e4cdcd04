"""``/api/v1/sources`` and ``/api/v1/pulls``: PACS radloop pulls from, and what it pulled."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from radloop import services
from radloop.api.auth import Operator, Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.api.schemas import PullRequest
from radloop.core.models import PullState
from radloop.core.read_models import PollOut, PullOut, SourceOut

router = APIRouter(prefix="/api/v1", tags=["pulls"])
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows.")]


@router.get("/sources", response_model=list[SourceOut], responses=responses())
def list_sources(ctx: Ctx, _caller: Viewer) -> list[SourceOut]:
    """Configured pull sources, their polling settings and where polling stands."""
    return services.list_sources(ctx.settings, ctx.engine)


@router.post("/sources/{name}/poll", response_model=PollOut, responses=responses(404, 502))
def poll_source(name: str, ctx: Ctx, _caller: Operator) -> PollOut:
    """Poll a source once now, as the scheduled poll does (new studies only)."""
    return services.poll_source(ctx.puller, name)


@router.post("/pulls", response_model=list[PullOut], responses=responses(404, 409, 422, 502))
def pull(body: PullRequest, ctx: Ctx, _caller: Operator) -> list[PullOut]:
    """Retrieve a study from a source now, by accession number or StudyInstanceUID; it is routed
    like a pushed study. Answers when the retrieve is over."""
    return services.pull_study(ctx.puller, body.source, body.accession_number, body.study_instance_uid)


@router.get("/pulls", response_model=list[PullOut], responses=responses(422))
def list_pulls(
    ctx: Ctx, _caller: Viewer, source: str | None = None, state: PullState | None = None, limit: Limit = 100
) -> list[PullOut]:
    """Studies found on pull sources, newest first."""
    return services.list_pulls(ctx.engine, source, state and state.value, limit)
