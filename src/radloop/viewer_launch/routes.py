"""``/review/...``: the PACS launch endpoint, the review app and the JSON it fetches.

Routes parse, call :class:`~radloop.viewer_launch.service.ReviewService`, and format. Browsers
authenticate with the review session cookie a valid launch sets (HttpOnly, SameSite=Lax, path
``/review``); requests that change something must also carry ``X-Radloop-Review: 1``, which a
cross-site form cannot send. Denied access is a 403 page (browser) or problem (JSON).

No ``from __future__ import annotations`` here: the routes are closures over one service, and
FastAPI must see their ``Annotated`` dependency aliases (local names) as evaluated types.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from radloop.core.errors import NotFoundError, RequestError
from radloop.core.models import ReviewDecision
from radloop.core.settings import Settings
from radloop.viewer_launch import pages
from radloop.viewer_launch.review_cache import IMAGE_FILE, MASK_FILE
from radloop.viewer_launch.service import ReviewService
from radloop.viewer_launch.signing import LaunchDeniedError, ReviewSession, encode_session, session_key

_P = ParamSpec("_P")
_T = TypeVar("_T")
COOKIE = "radloop_review"
APP_HEADER = "X-Radloop-Review"
STATIC_DIR = Path(__file__).parent / "static"

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self' data: blob:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'"
    ),
}
DATA_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}

_DENIED_TITLES = {
    "bad-signature": "Invalid review link",
    "malformed": "Invalid review link",
    "expired": "Review link expired",
    "not-yet-valid": "Review link not valid yet",
}


class DecisionIn(BaseModel):
    """An accept or a reject from the review app."""

    decision: Literal["accepted", "rejected"]
    reason: str = Field("", max_length=2000)
    view_id: int | None = None


def review_router(settings: Settings, engine: Engine) -> APIRouter:
    """The ``/review`` routes over one :class:`ReviewService` (build once per app)."""
    service = ReviewService(settings, engine)
    router = APIRouter(prefix="/review", tags=["review"])

    def current_session(request: Request) -> ReviewSession:
        try:
            return service.session(request.cookies.get(COOKIE))
        except LaunchDeniedError as e:
            raise HTTPException(403, str(e)) from e

    def changing_request(x_radloop_review: Annotated[str, Header()] = "") -> None:
        if x_radloop_review != "1":
            raise HTTPException(403, f"requests that change data must carry {APP_HEADER}: 1")

    SessionDep = Annotated[ReviewSession, Depends(current_session)]
    Changing = Annotated[None, Depends(changing_request)]

    @router.get("/launch", response_class=HTMLResponse, include_in_schema=False)
    def launch(request: Request) -> Response:
        """Verify a PACS launch URL, open a session (cookie) and go to the result or the worklist."""
        try:
            launched = service.launch(request.scope.get("query_string", b"").decode("latin-1"))
        except LaunchDeniedError as e:
            title = _DENIED_TITLES.get(e.reason, "Review not allowed")
            return _html(pages.message_page(title, str(e), "Open the result again from the PACS."), 403)
        except NotFoundError as e:
            return _html(pages.message_page("Nothing to review", str(e)), 404)
        target = (
            "/review/worklist" if launched.result_id is None else f"/review/app/?result={launched.result_id}"
        )
        response = RedirectResponse(target, status_code=303, headers={"Referrer-Policy": "no-referrer"})
        response.set_cookie(
            COOKIE,
            encode_session(session_key(settings), launched.session),
            max_age=int(settings.review.session_ttl_s),
            path="/review",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https" or settings.review.base_url.startswith("https://"),
        )
        return response

    @router.get("/app/", response_class=HTMLResponse, include_in_schema=False)
    def app_page(request: Request) -> Response:
        """The review app (the built NiiVue bundle); needs a session."""
        denied = _page_session(service, request)
        if isinstance(denied, Response):
            return denied
        return _html((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @router.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request) -> Response:
        """Results awaiting review, as a page (worklist sessions)."""
        session = _page_session(service, request)
        if isinstance(session, Response):
            return session
        try:
            rows = service.worklist(session)
        except LaunchDeniedError as e:
            return _html(pages.message_page("Worklist not available", str(e)), 403)
        return _html(pages.worklist_page(session.reviewer, rows))

    @router.get("/quality", response_class=HTMLResponse, include_in_schema=False)
    def quality_page(request: Request, period: Literal["day", "week", "month"] = "week") -> Response:
        """Per-model quality over time with plots."""
        session = _page_session(service, request)
        if isinstance(session, Response):
            return session
        return _html(pages.quality_page(service.quality(session, period), period))

    @router.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        """The review app's built assets (code, styles, fonts; no patient data)."""
        root = STATIC_DIR.resolve()
        path = (root / name).resolve()
        if not path.is_file() or not path.is_relative_to(root):
            raise HTTPException(404, "no such file")
        cache = "public, max-age=31536000, immutable" if name.startswith("assets/") else "no-cache"
        return FileResponse(path, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})

    @router.get("/api/session")
    def get_session(session: SessionDep) -> dict[str, Any]:
        """Who is reviewing, which result the session opens (null = worklist), until when."""
        return {
            "reviewer": session.reviewer,
            "result_id": session.result_id,
            "expires_at": session.expires_at,
        }

    @router.get("/api/results/{result_id}")
    def get_result(result_id: int, session: SessionDep) -> dict[str, Any]:
        """Study, series, model, segments and AI volume of a result; records the view."""
        return _guarded(service.view, session, result_id)

    @router.get(f"/api/results/{{result_id}}/{IMAGE_FILE}")
    def get_image(result_id: int, session: SessionDep) -> FileResponse:
        """The source series as NIfTI-1 on the review grid."""
        path = _guarded(service.data_file, session, result_id, IMAGE_FILE)
        return FileResponse(path, media_type="application/octet-stream", headers=DATA_HEADERS)

    @router.get(f"/api/results/{{result_id}}/{MASK_FILE}")
    def get_mask(result_id: int, session: SessionDep) -> FileResponse:
        """The AI SEG as a gzipped NIfTI-1 label volume on the same grid."""
        path = _guarded(service.data_file, session, result_id, MASK_FILE)
        return FileResponse(path, media_type="application/gzip", headers=DATA_HEADERS)

    @router.post("/api/results/{result_id}/decision")
    def post_decision(
        result_id: int, body: DecisionIn, session: SessionDep, _changing: Changing
    ) -> dict[str, Any]:
        """Accept the AI result as it is, or reject it (a reason is required)."""
        return _guarded(
            service.decide, session, result_id, ReviewDecision(body.decision), body.reason, body.view_id
        )

    @router.post("/api/results/{result_id}/edit")
    async def post_edit(
        result_id: int,
        session: SessionDep,
        _changing: Changing,
        request: Request,
        view_id: Annotated[int | None, Query()] = None,
        reason: Annotated[str, Query(max_length=2000)] = "",
    ) -> dict[str, Any]:
        """Save the edited mask (the NiiVue drawing as NIfTI-1, optionally gzipped) as a new SEG."""
        body = await _limited_body(request, settings.review.max_edit_bytes)
        return await run_in_threadpool(_guarded, service.save_edit, session, result_id, body, reason, view_id)

    @router.get("/api/worklist")
    def get_worklist(
        session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[dict[str, Any]]:
        """Results awaiting review (worklist sessions)."""
        return _guarded(service.worklist, session, limit)

    @router.get("/api/quality")
    def get_quality(
        session: SessionDep, period: Literal["day", "week", "month"] = "week"
    ) -> list[dict[str, Any]]:
        """Per-model acceptance rate and mean Dice of edits, per period."""
        return service.quality(session, period)

    return router


def _guarded(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call a service function; a denied session becomes 403 (other errors go to the app's handlers)."""
    try:
        return function(*args, **kwargs)
    except LaunchDeniedError as e:
        raise HTTPException(403, str(e)) from e


def _page_session(service: ReviewService, request: Request) -> ReviewSession | Response:
    """The session of a page request, or the 403 page to answer instead."""
    try:
        return service.session(request.cookies.get(COOKIE))
    except LaunchDeniedError as e:
        return _html(
            pages.message_page("Review session needed", str(e), "Open the result from the PACS."), 403
        )


async def _limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading it all."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the edited mask is larger than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise RequestError("the edited mask is empty")
    return b"".join(chunks)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=PAGE_HEADERS)
