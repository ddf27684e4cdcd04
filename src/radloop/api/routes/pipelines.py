"""``/api/v1/pipelines`` and ``/api/v1/models``: what radloop runs."""

from __future__ import annotations

from fastapi import APIRouter

from radloop import services
from radloop.api.auth import Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.core.read_models import ModelOut, PipelineOut

router = APIRouter(prefix="/api/v1", tags=["pipelines"])


@router.get("/pipelines", response_model=list[PipelineOut], responses=responses())
def list_pipelines(ctx: Ctx, _caller: Viewer) -> list[PipelineOut]:
    """Loaded (validated) pipelines: match rules, operators in order, destinations."""
    return services.list_pipelines(ctx.catalog)


@router.get("/pipelines/{name}", response_model=PipelineOut, responses=responses(404))
def get_pipeline(name: str, ctx: Ctx, _caller: Viewer) -> PipelineOut:
    """One pipeline."""
    return services.get_pipeline(ctx.catalog, name)


@router.get("/models", response_model=list[ModelOut], responses=responses())
def list_models(ctx: Ctx, _caller: Viewer) -> list[ModelOut]:
    """Models in the model store and packaged with radloop, and the pipelines that use each."""
    return services.list_models(ctx.settings, ctx.catalog)
