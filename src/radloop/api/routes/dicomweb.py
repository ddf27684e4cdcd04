"""``/dicomweb``: STOW-RS in (per virtual AE title), QIDO-RS and WADO-RS out, over radloop's store.

* ``POST /dicomweb/aets/{ae_title}/studies[/{study}]``: store instances as if sent by C-STORE to
  the listener ``ae_title`` (its pipelines and completion rules apply); ``POST /dicomweb/studies``
  uses ``api.default_ae_title`` (else the first listener).
* ``GET /dicomweb/studies``, ``/series``, ``/studies/{study}/series``, ``.../instances``: QIDO-RS.
* ``GET /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]`` (instances),
  ``.../metadata``, ``.../frames/{n,m}``, ``.../bulkdata/{tag}``: WADO-RS.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from radloop.api import audit_trail
from radloop.api.auth import Operator, Viewer
from radloop.api.deps import Ctx
from radloop.api.problems import responses
from radloop.connector.dicomweb import qido, stow, wado
from radloop.connector.dicomweb.multipart import new_boundary, write_parts
from radloop.connector.ingest import IngestSession
from radloop.core import tokens
from radloop.core.errors import NotFoundError
from radloop.core.roles import PermissionDeniedError

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
DICOM_JSON = "application/dicom+json"
Accept = Annotated[str | None, Header()]
_JSON_OK = {"content": {DICOM_JSON: {}}, "description": "DICOM JSON"}
_MULTIPART_OK = {"content": {"multipart/related": {}}, "description": "multipart/related body parts"}


class _Urls:
    """RetrieveURLs under this server's DICOMweb root."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, study: str, series: str | None = None, sop: str | None = None) -> str:
        url = f"{self.root}/studies/{study}"
        if series:
            url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
        return url


def _urls(request: Request, ctx: Ctx) -> _Urls:
    """URLs from ``api.base_url``, else from the request (its Host header, our port if it names none:
    dicomweb-client sends the host without the port)."""
    base = ctx.settings.api.base_url.rstrip("/")
    if not base:
        url = request.base_url
        server = request.scope.get("server")
        if url.port is None and server and server[1] not in (80, 443):
            url = url.replace(port=int(server[1]))
        base = str(url).rstrip("/")
    return _Urls(f"{base}/dicomweb")


# --------------------------------------------------------------------------- STOW-RS


async def _stow(
    request: Request, ctx: Ctx, caller: tokens.Caller, ae_title: str, study: str | None
) -> JSONResponse:
    listener = ctx.settings.listener(ae_title)
    if listener is None:
        raise NotFoundError(f"no listener AE title {ae_title!r} to store into")
    if not listener.allows_token(caller.name):  # the DIMSE allowlist's rule, for tokens
        raise PermissionDeniedError(
            f"token {caller.name!r} may not store into {ae_title!r} (dicom.listeners[].allowed_tokens)"
        )
    max_bytes = ctx.settings.api.max_request_bytes
    stow.check_length(request.headers.get("content-length"), max_bytes)
    session = IngestSession(ctx.store, ctx.assembler.on_association_end, ae_title, caller.name)
    receiver = stow.StowRequest(session, study, _urls(request, ctx), session.limits)
    outcome = await stow.receive(
        receiver,
        request.stream(),
        request.headers.get("content-type"),
        max_bytes,
        run_in_threadpool,
        ctx.settings.data_dir / "tmp",
    )
    headers = [("Warning", w) for w in outcome.warnings()]
    response = JSONResponse(outcome.json(), status_code=outcome.http_status, media_type=DICOM_JSON)
    for name, value in headers:
        response.headers.append(name, value)
    return response


_STOW_DOC = responses(
    400,
    404,
    409,
    413,
    415,
    507,
    ok={
        "content": {DICOM_JSON: {}},
        "description": "Store Instances Response (202: some failed; 409: none stored)",
    },
)


@router.post("/aets/{ae_title}/studies", response_class=JSONResponse, responses=_STOW_DOC)
async def stow_to_ae(ae_title: str, request: Request, ctx: Ctx, caller: Operator) -> JSONResponse:
    """STOW-RS into the listener ``ae_title`` (a virtual AE: its pipelines apply)."""
    return await _stow(request, ctx, caller, ae_title, None)


@router.post("/aets/{ae_title}/studies/{study}", response_class=JSONResponse, responses=_STOW_DOC)
async def stow_study_to_ae(
    ae_title: str, study: str, request: Request, ctx: Ctx, caller: Operator
) -> JSONResponse:
    """STOW-RS of instances of one study into the listener ``ae_title``."""
    return await _stow(request, ctx, caller, ae_title, study)


def _default_ae(ctx: Ctx) -> str:
    return ctx.settings.api.default_ae_title or ctx.settings.dicom.listeners[0].ae_title


@router.post("/studies", response_class=JSONResponse, responses=_STOW_DOC)
async def stow_default(request: Request, ctx: Ctx, caller: Operator) -> JSONResponse:
    """STOW-RS into the default listener (``api.default_ae_title``, else the first listener)."""
    return await _stow(request, ctx, caller, _default_ae(ctx), None)


@router.post("/studies/{study}", response_class=JSONResponse, responses=_STOW_DOC)
async def stow_study_default(study: str, request: Request, ctx: Ctx, caller: Operator) -> JSONResponse:
    """STOW-RS of instances of one study into the default listener."""
    return await _stow(request, ctx, caller, _default_ae(ctx), study)


# --------------------------------------------------------------------------- QIDO-RS


def _qido(rows: list[dict[str, Any]], ignored: list[str]) -> JSONResponse:
    response = JSONResponse(rows, media_type=DICOM_JSON)
    if ignored:
        response.headers["Warning"] = (
            f'299 radloop "matching keys ignored at this level: {", ".join(ignored)}"'
        )
    return response


_QIDO_DOC = responses(400, 404, ok=_JSON_OK)


@router.get("/studies", response_class=JSONResponse, responses=_QIDO_DOC)
def search_studies(request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """QIDO-RS Search for Studies (matching keys, ``includefield``, ``limit``, ``offset`` as query)."""
    query = qido.QidoQuery.parse(request.query_params.multi_items())
    audit_trail.audit_query(request, ctx, caller)
    rows = qido.search_studies(ctx.index, query, _urls(request, ctx))
    return _qido(rows, qido.ignored_keys(query, qido.STUDY_KEYS))


@router.get("/series", response_class=JSONResponse, responses=_QIDO_DOC)
def search_all_series(request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """QIDO-RS Search for Series in all studies."""
    query = qido.QidoQuery.parse(request.query_params.multi_items())
    audit_trail.audit_query(request, ctx, caller)
    rows = qido.search_series(ctx.index, None, query, _urls(request, ctx))
    return _qido(rows, qido.ignored_keys(query, qido.SERIES_KEYS + qido.STUDY_KEYS[:-1]))


@router.get("/studies/{study}/series", response_class=JSONResponse, responses=_QIDO_DOC)
def search_series(study: str, request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """QIDO-RS Search for Series of one study."""
    query = qido.QidoQuery.parse(request.query_params.multi_items())
    audit_trail.audit_query(request, ctx, caller)
    rows = qido.search_series(ctx.index, study, query, _urls(request, ctx))
    return _qido(rows, qido.ignored_keys(query, qido.SERIES_KEYS))


@router.get("/studies/{study}/instances", response_class=JSONResponse, responses=_QIDO_DOC)
def search_study_instances(study: str, request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """QIDO-RS Search for Instances of one study."""
    query = qido.QidoQuery.parse(request.query_params.multi_items())
    audit_trail.audit_query(request, ctx, caller)
    rows = qido.search_instances(ctx.index, study, None, query, _urls(request, ctx))
    return _qido(rows, qido.ignored_keys(query, qido.INSTANCE_KEYS + qido.SERIES_KEYS))


@router.get("/studies/{study}/series/{series}/instances", response_class=JSONResponse, responses=_QIDO_DOC)
def search_instances(study: str, series: str, request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """QIDO-RS Search for Instances of one series."""
    query = qido.QidoQuery.parse(request.query_params.multi_items())
    audit_trail.audit_query(request, ctx, caller)
    rows = qido.search_instances(ctx.index, study, series, query, _urls(request, ctx))
    return _qido(rows, qido.ignored_keys(query, qido.INSTANCE_KEYS + qido.SERIES_KEYS))


# --------------------------------------------------------------------------- WADO-RS


def _multipart(bodies: Iterable[wado.Body], inner_type: str) -> StreamingResponse:
    boundary = new_boundary()
    parts: Iterator[tuple[str, bytes]] = ((b.content_type, b.content) for b in bodies)
    media_type = f'multipart/related; type="{inner_type}"; boundary={boundary}'
    return StreamingResponse(write_parts(parts, boundary), media_type=media_type)


_WADO_DOC = responses(400, 404, 406, ok=_MULTIPART_OK)


@router.get("/studies/{study}", response_class=StreamingResponse, responses=_WADO_DOC)
def retrieve_study(
    study: str, request: Request, ctx: Ctx, caller: Viewer, accept: Accept = None
) -> StreamingResponse:
    """WADO-RS Retrieve Study: every instance (received and results) as application/dicom."""
    audit_trail.audit_access(request, ctx, caller, study)
    return _multipart(wado.instance_bodies(ctx.index.instances(study), accept), "application/dicom")


@router.get("/studies/{study}/series/{series}", response_class=StreamingResponse, responses=_WADO_DOC)
def retrieve_series(
    study: str, series: str, request: Request, ctx: Ctx, caller: Viewer, accept: Accept = None
) -> StreamingResponse:
    """WADO-RS Retrieve Series."""
    audit_trail.audit_access(request, ctx, caller, study)
    return _multipart(wado.instance_bodies(ctx.index.instances(study, series), accept), "application/dicom")


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}", response_class=StreamingResponse, responses=_WADO_DOC
)
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, ctx: Ctx, caller: Viewer, accept: Accept = None
) -> StreamingResponse:
    """WADO-RS Retrieve Instance."""
    audit_trail.audit_access(request, ctx, caller, study)
    return _multipart(
        wado.instance_bodies(ctx.index.instances(study, series, sop), accept), "application/dicom"
    )


_META_DOC = responses(404, ok=_JSON_OK)


@router.get("/studies/{study}/metadata", response_class=JSONResponse, responses=_META_DOC)
def study_metadata(study: str, request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """WADO-RS Retrieve Study Metadata (DICOM JSON; large binary values as BulkDataURI)."""
    audit_trail.audit_access(request, ctx, caller, study)
    items = wado.metadata(ctx.index.instances(study), _urls(request, ctx))
    return JSONResponse(items, media_type=DICOM_JSON)


@router.get("/studies/{study}/series/{series}/metadata", response_class=JSONResponse, responses=_META_DOC)
def series_metadata(study: str, series: str, request: Request, ctx: Ctx, caller: Viewer) -> JSONResponse:
    """WADO-RS Retrieve Series Metadata."""
    audit_trail.audit_access(request, ctx, caller, study)
    items = wado.metadata(ctx.index.instances(study, series), _urls(request, ctx))
    return JSONResponse(items, media_type=DICOM_JSON)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/metadata",
    response_class=JSONResponse,
    responses=_META_DOC,
)
def instance_metadata(
    study: str, series: str, sop: str, request: Request, ctx: Ctx, caller: Viewer
) -> JSONResponse:
    """WADO-RS Retrieve Instance Metadata."""
    audit_trail.audit_access(request, ctx, caller, study)
    items = wado.metadata(ctx.index.instances(study, series, sop), _urls(request, ctx))
    return JSONResponse(items, media_type=DICOM_JSON)


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    response_class=StreamingResponse,
    responses=_WADO_DOC,
)
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    ctx: Ctx,
    caller: Viewer,
    accept: Accept = None,
) -> Response:
    """WADO-RS Retrieve Frames (``1`` or ``1,2,5``): uncompressed octet-stream, or as stored if compressed."""
    audit_trail.audit_access(request, ctx, caller, study)
    (inst,) = ctx.index.instances(study, series, sop)
    bodies = wado.frames(inst, frames, accept)
    return _multipart(bodies, bodies[0].content_type.split(";")[0])


@router.get(
    "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
    response_class=StreamingResponse,
    responses=_WADO_DOC,
)
def retrieve_bulkdata(
    study: str, series: str, sop: str, tag: str, request: Request, ctx: Ctx, caller: Viewer
) -> Response:
    """WADO-RS Retrieve Bulk Data of one top-level attribute (a ``BulkDataURI`` from the metadata)."""
    audit_trail.audit_access(request, ctx, caller, study)
    (inst,) = ctx.index.instances(study, series, sop)
    bodies = wado.bulkdata(inst, tag)
    return _multipart(bodies, bodies[0].content_type.split(";")[0])
