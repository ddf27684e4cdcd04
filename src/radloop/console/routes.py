"""``/console/...``: the operator console's pages and actions, over :mod:`radloop.services`.

Every page calls the same service functions as the CLI and the REST API and renders their read
models (:mod:`radloop.console.pages`); every action (retry, cancel, dismiss, poll now) is the
same service call as ``POST /api/v1/...``. Pages answer ``X-Console-Live: 1`` requests with
their live part only, with an ETag (304 when unchanged), and every answer carries a
``Server-Timing`` header (``app;dur=`` milliseconds spent building it).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as UrlPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from radloop import services
from radloop.api.auth import PUBLIC
from radloop.api.deps import Ctx, RowId
from radloop.console import pages
from radloop.console.auth import COOKIE, OperatorAction, SignedOn, ViewerPage, console_key
from radloop.core import tokens
from radloop.core.audit import record
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError, NotFoundError, RequestError
from radloop.core.models import Result
from radloop.core.read_models import DeliveryOut, JobOut, PollOut
from radloop.feedback import decisions
from radloop.runtime import Runtime
from radloop.viewer_launch.routes import COOKIE as REVIEW_COOKIE
from radloop.viewer_launch.routes import is_https
from radloop.viewer_launch.signing import ReviewSession, encode_session, session_key

STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}
LIVE_HEADER = "x-console-live"
PAGE_SIZE = 50

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
review_bridge = APIRouter(prefix="/review", tags=["console"], include_in_schema=False)

Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Text = Annotated[str, Query(max_length=64)]


async def _render(
    request: Request,
    session: ReviewSession,
    title: str,
    active: str,
    live: Callable[[], str],
    tools: str = "",
) -> Response:
    """The page, or (``X-Console-Live: 1``) its live part with an ETag; 304 when unchanged."""
    started = time.perf_counter()
    body = await run_in_threadpool(live)
    etag = '"' + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32] + '"'
    timing = {"Server-Timing": f"app;dur={(time.perf_counter() - started) * 1000:.1f}", "ETag": etag}
    if request.headers.get(LIVE_HEADER) == "1":
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={**PAGE_HEADERS, **timing})
        return HTMLResponse(body, headers={**PAGE_HEADERS, **timing})
    html = pages.page(title, session.reviewer, active, body, tools)
    return HTMLResponse(html, headers={**PAGE_HEADERS, **timing})


# --------------------------------------------------------------------------- sign-in


@router.get("/login", dependencies=[PUBLIC])
def login_form(
    ctx: Ctx, next: Annotated[str, Query(max_length=2000)] = "/console/", error: str = ""
) -> Response:
    """The sign-in page: an API token, or single sign-on when configured."""
    return HTMLResponse(
        pages.login_page(_safe_next(next), error[:200], ctx.settings.oidc.enabled), headers=PAGE_HEADERS
    )


@router.post("/login", dependencies=[PUBLIC])
async def login(request: Request, ctx: Ctx) -> Response:
    """Open a console session for the holder of an API token (its name and roles), audited."""
    raw = await request.body()
    if len(raw) > 8192:
        raise RequestError("the sign-in form is too large")
    form = parse_qs(raw.decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/console/"])[0])
    interval = ctx.settings.api.token_touch_interval_s
    try:
        caller = await run_in_threadpool(tokens.authenticate, ctx.engine, token, interval)
    except tokens.AuthenticationError as e:
        return HTMLResponse(
            pages.login_page(target, str(e), ctx.settings.oidc.enabled), 401, headers=PAGE_HEADERS
        )
    await run_in_threadpool(_audit, ctx, caller.name, "console.login", "", {"token_id": caller.token_id})
    return _open_session(request, ctx, caller.name, caller.roles, "token", target)


@review_bridge.get("/to-console")
def from_sign_on(request: Request, ctx: Ctx, session: SignedOn) -> Response:
    """After single sign-on (``/auth/login?next=/review/to-console``): the same user and roles
    in the console."""
    if isinstance(session, Response):
        return session
    return _open_session(request, ctx, session.reviewer, session.roles, "oidc", "/console/")


def _open_session(
    request: Request, ctx: Ctx, user: str, roles: tuple[str, ...], login: str, target: str
) -> Response:
    now = int(time.time())
    ttl = int(ctx.settings.review.session_ttl_s)
    session = ReviewSession(
        session_id=hashlib.sha256(f"{user}{now}{time.perf_counter_ns()}".encode()).hexdigest()[:32],
        reviewer=user,
        result_id=None,
        issued_at=now,
        expires_at=now + ttl,
        roles=roles,
        login=login,
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        encode_session(console_key(ctx.settings), session),
        max_age=ttl,
        path="/console",
        httponly=True,
        samesite="lax",
        secure=is_https(request, ctx.settings),
    )
    return response


@router.post("/logout", dependencies=[PUBLIC])
def logout() -> Response:
    """End the console session (the cookie is cleared)."""
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(COOKIE, path="/console")
    return response


def _safe_next(target: str) -> str:
    """Only a console path on this server (no open redirect)."""
    return (
        target if target.startswith("/console") and "//" not in target and "\\" not in target else "/console/"
    )


def _audit(ctx: Runtime, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
    with session_scope(ctx.engine) as s:
        record(s, actor, action, subject, detail)


# --------------------------------------------------------------------------- pages


@router.get("/")
async def overview_page(
    request: Request,
    ctx: Ctx,
    session: ViewerPage,
    window: Annotated[str, Query(pattern="^(hour|day)$")] = "hour",
) -> Response:
    """Counters and charts over the last hour or day, the queue, the outbox, and alerts."""
    if isinstance(session, Response):
        return session
    tools = (
        "<p class=tools>window: "
        + " · ".join(
            f"<a href='?window={w}'{' class=active' if w == window else ''}>last {w}</a>"
            for w in ("hour", "day")
        )
        + "</p>"
    )
    return await _render(
        request,
        session,
        "Overview",
        "/console/",
        lambda: pages.overview_live(services.overview(ctx.settings, ctx.engine, window)),
        tools,
    )


@router.get("/studies")
async def studies_page(
    request: Request,
    ctx: Ctx,
    session: ViewerPage,
    patient: Text = "",
    accession: Text = "",
    date_from: Text = "",
    date_to: Text = "",
    modality: Text = "",
    ae: Text = "",
    offset: Offset = 0,
) -> Response:
    """Study search (patient, accession, date, modality, AE), newest first, a page at a time."""
    if isinstance(session, Response):
        return session
    params = {
        "patient": patient,
        "accession": accession,
        "date_from": date_from,
        "date_to": date_to,
        "modality": modality,
        "ae": ae,
    }

    def live() -> str:
        found = services.search_studies(ctx.engine, **params, limit=PAGE_SIZE, offset=offset)
        return pages.studies_live(found, params)

    return await _render(request, session, "Studies", "/console/studies", live, pages.studies_tools(params))


@router.get("/studies/{study_instance_uid}")
async def study_page(
    request: Request,
    ctx: Ctx,
    session: ViewerPage,
    study_instance_uid: Annotated[str, UrlPath(max_length=64)],
) -> Response:
    """A study: its series with each routing outcome and reason, and the jobs run on them."""
    if isinstance(session, Response):
        return session
    return await _render(
        request,
        session,
        f"Study {study_instance_uid}",
        "/console/studies",
        lambda: pages.study_live(services.get_study(ctx.engine, study_instance_uid)),
    )


@router.get("/jobs")
async def jobs_page(
    request: Request,
    ctx: Ctx,
    session: ViewerPage,
    state: Annotated[str, Query(pattern="^(|queued|running|succeeded|failed|cancelled)$")] = "",
    pipeline: Text = "",
    priority: Annotated[str, Query(pattern="^(|stat|high|normal|low)$")] = "",
    offset: Offset = 0,
) -> Response:
    """The job queue by state, pipeline and priority, with retry and cancel."""
    if isinstance(session, Response):
        return session
    params = {"state": state, "pipeline": pipeline, "priority": priority}

    def live() -> str:
        found = services.page_jobs(
            ctx.engine, state or None, pipeline or None, priority or None, PAGE_SIZE, offset
        )
        return pages.jobs_live(found, params)

    tools = pages.jobs_tools(params, ctx.catalog.names())
    return await _render(request, session, "Jobs", "/console/jobs", live, tools)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, ctx: Ctx, session: ViewerPage, job_id: RowId) -> Response:
    """One job: its operators as a timeline per attempt, their logs, and its results."""
    if isinstance(session, Response):
        return session

    def live() -> str:
        job = services.get_job(ctx.engine, job_id)
        reviewable = {r.id for r in job.results if r.kind == decisions.REVIEWABLE_KIND}
        return pages.job_live(job, reviewable)

    return await _render(request, session, f"Job {job_id}", "/console/jobs", live)


@router.get("/review/{result_id}")
def open_review(request: Request, ctx: Ctx, session: ViewerPage, result_id: RowId) -> Response:
    """Open a result in the review app as the console's user (a review session for that result
    with the user's roles: a radiologist may decide, others look)."""
    if isinstance(session, Response):
        return session
    with session_scope(ctx.engine) as s:
        result = s.get(Result, result_id)
        if result is None:
            raise NotFoundError(f"no result {result_id}")
    now = int(time.time())
    ttl = int(ctx.settings.review.session_ttl_s)
    review = ReviewSession(
        session_id=session.session_id,
        reviewer=session.reviewer,
        result_id=result_id,
        issued_at=now,
        expires_at=min(now + ttl, session.expires_at),
        roles=session.roles,
        login="console",
    )
    response = RedirectResponse(f"/review/app/?result={result_id}", status_code=303)
    response.set_cookie(
        REVIEW_COOKIE,
        encode_session(session_key(ctx.settings), review),
        max_age=ttl,
        path="/review",
        httponly=True,
        samesite="lax",
        secure=is_https(request, ctx.settings),
    )
    return response


@router.get("/deliveries")
async def deliveries_page(
    request: Request,
    ctx: Ctx,
    session: ViewerPage,
    state: Annotated[str, Query(pattern="^(|pending|sent|failed|dismissed)$")] = "",
    destination: Text = "",
    offset: Offset = 0,
) -> Response:
    """Destinations (up or down) and the outbox by destination, with retry and dismiss."""
    if isinstance(session, Response):
        return session
    params = {"state": state, "destination": destination}

    def live() -> str:
        destinations = services.destination_status(ctx.settings, ctx.engine)
        found = services.page_deliveries(ctx.engine, state or None, destination or None, PAGE_SIZE, offset)
        return pages.deliveries_live(destinations, found, params)

    names = [d.name for d in ctx.settings.destinations]
    return await _render(
        request, session, "Deliveries", "/console/deliveries", live, pages.deliveries_tools(params, names)
    )


@router.get("/sources")
async def sources_page(request: Request, ctx: Ctx, session: ViewerPage) -> Response:
    """Pull sources with the last poll's outcome and "poll now"; the studies pulled lately."""
    if isinstance(session, Response):
        return session
    return await _render(
        request,
        session,
        "Pull sources",
        "/console/sources",
        lambda: pages.sources_live(
            services.list_sources(ctx.settings, ctx.engine), services.list_pulls(ctx.engine, limit=PAGE_SIZE)
        ),
    )


@router.get("/pipelines")
async def pipelines_page(request: Request, ctx: Ctx, session: ViewerPage) -> Response:
    """Every pipeline file, validated now: the operator graph, or the error with file, line and field."""
    if isinstance(session, Response):
        return session
    return await _render(
        request,
        session,
        "Pipelines",
        "/console/pipelines",
        lambda: pages.pipelines_live(services.pipeline_files(ctx.settings, ctx.catalog)),
    )


@router.get("/models")
async def models_page(request: Request, ctx: Ctx, session: ViewerPage) -> Response:
    """Models with their versions, stages and the pipelines using them."""
    if isinstance(session, Response):
        return session

    def live() -> str:
        from radloop.inference.stages import read_stages

        models = services.list_models(ctx.settings, ctx.catalog)
        root = ctx.settings.inference.store_dir(ctx.settings.data_dir)
        stages: dict[tuple[str, str], str] = {}
        for name in {m.name for m in models if m.location == "store"}:
            try:
                staged = read_stages(root / name)
            except ConfigError as exc:  # a broken stages.json is shown, not a 500
                stages.update({(name, m.version): f"unreadable: {exc}" for m in models if m.name == name})
                continue
            for m in models:
                if m.name == name and (stage := staged.stage_of(m.version)) is not None:
                    stages[(name, m.version)] = stage.value
        return pages.models_live(models, stages)

    return await _render(request, session, "Models", "/console/models", live)


@router.get("/static/{name}", dependencies=[PUBLIC])
def static(name: Annotated[str, UrlPath(pattern=r"^console\.(js|css)$")]) -> FileResponse:
    """The console's script and style sheet (no patient data)."""
    path = STATIC_DIR / name
    if not path.is_file():
        raise HTTPException(404, "no such file")
    return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# --------------------------------------------------------------------------- actions (the REST API's calls)


@router.post("/api/jobs/{job_id}/retry")
def retry_job(job_id: RowId, ctx: Ctx, session: OperatorAction) -> JobOut:
    """Re-queue a finished job now (as ``POST /api/v1/jobs/{id}/retry``)."""
    row = services.retry_job(ctx.engine, job_id, ctx.settings.workers.max_attempts)
    _audit(ctx, session.reviewer, "console.job.retry", f"job/{job_id}", {})
    return row


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(job_id: RowId, ctx: Ctx, session: OperatorAction) -> JobOut:
    """Cancel a queued or running job (as ``POST /api/v1/jobs/{id}/cancel``)."""
    row = services.cancel_job(ctx.engine, job_id)
    _audit(ctx, session.reviewer, "console.job.cancel", f"job/{job_id}", {})
    return row


@router.post("/api/deliveries/{delivery_id}/retry")
def retry_delivery(delivery_id: RowId, ctx: Ctx, session: OperatorAction) -> DeliveryOut:
    """Send a delivery again now (as ``POST /api/v1/deliveries/{id}/retry``)."""
    row = services.retry_delivery(ctx.engine, delivery_id)
    _audit(ctx, session.reviewer, "console.delivery.retry", f"delivery/{delivery_id}", {})
    return row


@router.post("/api/deliveries/{delivery_id}/dismiss")
def dismiss_delivery(delivery_id: RowId, ctx: Ctx, session: OperatorAction) -> DeliveryOut:
    """Stop retrying a delivery (as ``POST /api/v1/deliveries/{id}/dismiss``)."""
    row = services.dismiss_delivery(ctx.engine, delivery_id)
    _audit(ctx, session.reviewer, "console.delivery.dismiss", f"delivery/{delivery_id}", {})
    return row


@router.post("/api/sources/{name}/poll")
def poll_source(name: Annotated[str, UrlPath(max_length=64)], ctx: Ctx, session: OperatorAction) -> PollOut:
    """Poll a pull source once now (as ``POST /api/v1/sources/{name}/poll``)."""
    report = services.poll_source(ctx.puller, name)
    _audit(ctx, session.reviewer, "console.source.poll", f"source/{name}", {"found": report.found})
    return report
