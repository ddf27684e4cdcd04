"""``/api/v1/reviews``, ``/api/v1/quality`` and ``/api/v1/review-urls``: review feedback for machines.

Decisions radiologists made in the review app, per-model quality over time, and signed launch
URLs for integrations that cannot compute the HMAC themselves (a RIS or PACS broker asks radloop
for the URL with its API token, then opens it on the workstation).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from radloop import services
from radloop.api.auth import Operator, Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.core import audit
from radloop.core.db import MAX_ROW_ID, session_scope
from radloop.core.errors import RequestError
from radloop.core.read_models import ReviewOut, WorklistItemOut
from radloop.feedback.quality import ModelQuality, model_quality
from radloop.feedback.shadow_quality import ShadowQuality, shadow_quality
from radloop.viewer_launch.signing import launch_url

router = APIRouter(prefix="/api/v1", tags=["reviews"])
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many rows.")]


class ReviewUrlRequest(BaseModel):
    """What a launch URL names: a study (UID or accession), optionally the result, and the reviewer."""

    reviewer: str = Field(min_length=1, max_length=128)
    study: str = Field("", description="StudyInstanceUID; empty with accession empty = worklist link")
    accession: str = Field("", max_length=64)
    result: str = Field("", description="SeriesInstanceUID or SOPInstanceUID of the SEG to review")
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400, description="Validity; default review.link_ttl_s")
    one_time: bool = Field(False, description="The link opens one session only (it carries a nonce).")


class ReviewUrlOut(BaseModel):
    """A signed launch URL and when it stops working (Unix seconds)."""

    url: str
    expires_at: int


@router.get("/reviews", response_model=list[ReviewOut], responses=responses(422))
def get_reviews(
    ctx: Ctx,
    _caller: Viewer,
    result_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    limit: Limit = 100,
) -> list[ReviewOut]:
    """Review decisions, newest first: reviewer, times, decision, reason, model, Dice and volumes."""
    return services.list_reviews(ctx.engine, result_id=result_id, limit=limit)


@router.get("/reviews/pending", response_model=list[WorklistItemOut], responses=responses(422))
def get_pending(ctx: Ctx, _caller: Viewer, limit: Limit = 200) -> list[WorklistItemOut]:
    """AI SEG results nobody has decided on yet (the worklist)."""
    return services.pending_reviews(ctx.engine, limit)


@router.get("/quality", response_model=list[ModelQuality], responses=responses(422))
def get_quality(
    ctx: Ctx, _caller: Viewer, period: Literal["day", "week", "month"] = "week"
) -> list[ModelQuality]:
    """Per model (name, version): acceptance rate, mean Dice of edits, per period and overall."""
    return model_quality(ctx.engine, period=period)


@router.get("/quality/shadow", response_model=list[ShadowQuality], responses=responses(422))
def get_shadow_quality(
    ctx: Ctx, _caller: Viewer, period: Literal["day", "week", "month"] = "week"
) -> list[ShadowQuality]:
    """Production vs each shadow version, per period: Dice of both against the reviewed final masks
    and their agreement (the quality page's third plot)."""
    return shadow_quality(ctx.engine, ctx.settings.data_dir, period=period)


@router.post("/review-urls", response_model=ReviewUrlOut, responses=responses(400, 422))
def create_review_url(body: ReviewUrlRequest, ctx: Ctx, caller: Operator) -> ReviewUrlOut:
    """A signed, expiring launch URL for a reviewer (what ``radloop review-url`` prints); audited."""
    settings = ctx.settings
    ttl = body.ttl_s if body.ttl_s is not None else settings.review.link_ttl_s
    if ttl > settings.review.max_link_lifetime_s:
        raise RequestError(
            f"ttl_s is longer than review.max_link_lifetime_s ({settings.review.max_link_lifetime_s:.0f})"
        )
    now = int(time.time())
    url = launch_url(
        settings,
        reviewer=body.reviewer,
        study=body.study,
        accession=body.accession,
        result=body.result,
        ttl_s=ttl,
        now=now,
        one_time=body.one_time,
    )
    with session_scope(ctx.engine) as s:
        audit.record(s, f"token:{caller.name}", "review.url_created", "", {"reviewer": body.reviewer})
    return ReviewUrlOut(url=url, expires_at=now + int(ttl))
