"""``/api/v1/exports``: training datasets from reviewed results, made and listed over HTTP.

An export made here goes into the server's exports folder (``training_export.exports_dir``,
default ``<data_dir>/exports``) under the ``name`` the caller gives: a client never names a
server path. Posting again with the same name and settings adds what was reviewed since (an
incremental export). The request runs the export before it answers (minutes for thousands of
cases); the answer is the export's summary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from radloop.api.auth import DataSteward
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.core.errors import RequestError
from radloop.core.models import ReviewDecision
from radloop.core.settings import Settings
from radloop.training_export import ExportFormat, ExportRequest, export_dataset
from radloop.training_export.cases import DEFAULT_DECISIONS
from radloop.training_export.state import list_exports

router = APIRouter(prefix="/api/v1", tags=["exports"])
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DATASET_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9-]{0,63})?$"


class ExportIn(BaseModel):
    """What to export (as ``radloop export dataset``); ``name`` is a folder in the exports folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Folder name in the server's exports folder.")
    pipeline: str = Field(min_length=1, max_length=128)
    format: ExportFormat
    decisions: list[ReviewDecision] = Field(
        default_factory=lambda: sorted(DEFAULT_DECISIONS), min_length=1, description="Decisions to export."
    )
    since: datetime | None = Field(None, description="Only decisions made since (UTC if naive).")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of patients for validation.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the patient split.")
    dataset_id: int = Field(500, ge=1, le=999, description="nnU-Net dataset number.")
    dataset_name: str = Field("", pattern=DATASET_NAME_PATTERN, description="Default: from the pipeline.")


class ExportOut(BaseModel):
    """An export's summary: this run's counts, then cases (per decision) and patients per side."""

    dataset_root: str
    format: str
    new: int
    updated: int
    unchanged: int
    removed: int
    failed: list[dict[str, str]]
    cases: dict[str, dict[str, int]]
    patients: dict[str, int]


def exports_dir(settings: Settings) -> Path:
    """The server's exports folder."""
    return settings.training_export.exports_dir or settings.data_dir / "exports"


@router.post("/exports", response_model=ExportOut, responses=responses(400, 409, 422))
async def post_export(body: ExportIn, ctx: Ctx, caller: DataSteward) -> dict[str, Any]:
    """Export the reviewed results of a pipeline into the exports folder (or add to an earlier export)."""
    since = body.since if body.since is None or body.since.tzinfo else body.since.replace(tzinfo=UTC)
    try:
        request = ExportRequest(
            pipeline=body.pipeline,
            out_dir=exports_dir(ctx.settings) / body.name,
            format=body.format,
            decisions=frozenset(body.decisions),
            since=since,
            val_fraction=body.val_fraction,
            seed=body.seed,
            dataset_name=body.dataset_name,
            dataset_id=body.dataset_id,
            requested_by=f"token:{caller.name}",
        )
    except ValueError as e:
        raise RequestError(str(e)) from e
    summary = await run_in_threadpool(export_dataset, ctx.settings, ctx.engine, request)
    return summary.to_dict()


@router.get("/exports", responses=responses())
def get_exports(ctx: Ctx, _caller: DataSteward) -> list[dict[str, Any]]:
    """Datasets in the exports folder: format, pipeline, settings, labels, cases and patients per side."""
    return list_exports(exports_dir(ctx.settings))
