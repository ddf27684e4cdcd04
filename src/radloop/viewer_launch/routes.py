"""``/review/...``: the PACS launch endpoint, the review app and the JSON it fetches.

Routes parse, call :class:`~radloop.viewer_launch.service.ReviewService`, and format. Browsers
authenticate with the review session cookie a valid launch sets (HttpOnly, SameSite=Lax, path
``/review``); requests that change something must also carry ``X-Radloop-Review: 1``, which a
cross-site form cannot send. Denied access is a 403 page (browser pages) or, for the JSON routes,
a :class:`LaunchDeniedError` that the app's error table (``radloop.api.problems``) answers 403.

The router is module-level, like those in ``radloop.api.routes``; its dependencies find the
running parts on ``app.state.radloop`` (the API context) without importing ``radloop.api``, so
the edge between the packages runs one way: the API assembles this router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi import Path as UrlPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from radloop.core.db import MAX_ROW_ID
from radloop.core.errors import NotFoundError, RequestError
from radloop.core.models import ReviewDecision
from radloop.core.roles import PermissionDeniedError, Public, Role, RoleRequirement
from radloop.core.settings import Settings
from radloop.viewer_launch import pages
from radloop.viewer_launch.review_cache import IMAGE_FILE, MASK_FILE
from radloop.viewer_launch.service import ReviewService
from radloop.viewer_launch.signing import LaunchDeniedError, ReviewSession, encode_session, session_key

COOKIE = "radloop_review"
APP_HEADER = "X-Radloop-Review"
STATIC_DIR = Path(__file__).parent / "static"
"""The largest id SQLite and PostgreSQL BIGINT hold: larger result or view ids are refused (422)."""

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
    "used": "Review link already used",
    "wrong-user": "Review link for another reviewer",
}


class RunningParts(Protocol):
    """What the review routes need of the app's running context (``app.state.radloop``)."""

    settings: Settings
    engine: Engine


async def get_service(request: Request) -> ReviewService:
    """The app's one :class:`ReviewService` (its review cache is per app), built on first use.

    Async on purpose: the check-and-set runs on the event loop, so concurrent first requests
    cannot build two services.
    """
    state = request.app.state
    service = getattr(state, "review_service", None)
    if not isinstance(service, ReviewService):
        parts: RunningParts = state.radloop
        service = state.review_service = ReviewService(parts.settings, parts.engine)
    return service


Service = Annotated[ReviewService, Depends(get_service)]


def current_session(service: Service, request: Request) -> ReviewSession:
    """The session in the review cookie; :class:`LaunchDeniedError` (403) if missing, forged or expired."""
    return service.session(request.cookies.get(COOKIE))


class SessionRole(RoleRequirement):
    """Dependency of the review app's JSON routes: the session, whose roles must grant :attr:`role`
    (403 problem otherwise)."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, service: Service, request: Request) -> ReviewSession:
        session = current_session(service, request)
        self.check(session.roles, f"reviewer {session.reviewer!r}")
        return session


class PageRole(RoleRequirement):
    """Dependency of the review app's pages: the session with :attr:`role`, or the 403 page to answer."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, service: Service, request: Request) -> ReviewSession | Response:
        try:
            session = current_session(service, request)
            self.check(session.roles, f"reviewer {session.reviewer!r}")
        except (LaunchDeniedError, PermissionDeniedError) as e:
            return _html(
                pages.message_page("Review session needed", str(e), "Open the result from the PACS."), 403
            )
        return session


def changing_request(x_radloop_review: Annotated[str, Header()] = "") -> None:
    """Refuse (403) a request that changes data unless it carries the review app's header."""
    if x_radloop_review != "1":
        raise HTTPException(403, f"requests that change data must carry {APP_HEADER}: 1")


SessionDep = Annotated[ReviewSession, Depends(SessionRole(Role.viewer))]
"""A review session (any role): to read what the session may see."""
ReviewerSession = Annotated[ReviewSession, Depends(SessionRole(Role.radiologist))]
"""A review session whose roles allow deciding: ``radiologist`` (every signed PACS link's session)."""
ViewerPage = Annotated[ReviewSession | Response, Depends(PageRole(Role.viewer))]
PUBLIC = Depends(Public())
Changing = Annotated[None, Depends(changing_request)]
ResultId = Annotated[int, UrlPath(ge=1, le=MAX_ROW_ID, description="The AI result's id.")]
ShadowId = Annotated[int, UrlPath(ge=1, le=MAX_ROW_ID, description="The shadow SEG result's id.")]
ViewId = Annotated[
    int | None, Query(ge=1, le=MAX_ROW_ID, description="The view event that started the review clock.")
]
Period = Literal["day", "week", "month"]

router = APIRouter(prefix="/review", tags=["review"])


class DecisionIn(BaseModel):
    """An accept or a reject from the review app."""

    decision: Literal["accepted", "rejected"]
    reason: str = Field("", max_length=2000)
    view_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)


@router.get("/launch", response_class=HTMLResponse, include_in_schema=False, dependencies=[PUBLIC])
def launch(service: Service, request: Request) -> Response:
    """Verify a PACS launch URL, open a session (cookie) and go to the result or the worklist."""
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    signed_in = None
    if service.settings.review.require_login:
        signed_in = _signed_in(service, request)
        if signed_in is None:  # sign in first, then come back to this very link
            target = quote(f"/review/launch?{raw_query}", safe="")
            return RedirectResponse(f"/auth/login?next={target}", status_code=303)
    try:
        launched = service.launch(raw_query, signed_in=signed_in)
    except LaunchDeniedError as e:
        title = _DENIED_TITLES.get(e.reason, "Review not allowed")
        return _html(pages.message_page(title, str(e), "Open the result again from the PACS."), 403)
    except NotFoundError as e:
        return _html(pages.message_page("Nothing to review", str(e)), 404)
    target = "/review/worklist" if launched.result_id is None else f"/review/app/?result={launched.result_id}"
    settings = service.settings
    response = RedirectResponse(target, status_code=303, headers={"Referrer-Policy": "no-referrer"})
    response.set_cookie(
        COOKIE,
        encode_session(session_key(settings), launched.session),
        max_age=int(settings.review.session_ttl_s),
        path="/review",
        httponly=True,
        samesite="lax",
        secure=is_https(request, settings),
    )
    return response


@router.get("/app/", response_class=HTMLResponse, include_in_schema=False)
def app_page(session: ViewerPage) -> Response:
    """The review app (the built NiiVue bundle); needs a session."""
    if isinstance(session, Response):
        return session
    return _html((STATIC_DIR / "index.html").read_text(encoding="utf-8"))


@router.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
def worklist_page(service: Service, session: ViewerPage) -> Response:
    """Results awaiting review, as a page (worklist sessions)."""
    if isinstance(session, Response):
        return session
    try:
        rows = service.worklist(session)
    except LaunchDeniedError as e:
        return _html(pages.message_page("Worklist not available", str(e)), 403)
    return _html(pages.worklist_page(session.reviewer, rows))


@router.get("/quality", response_class=HTMLResponse, include_in_schema=False)
def quality_page(service: Service, session: ViewerPage, period: Period = "week") -> Response:
    """Per-model quality over time with plots."""
    if isinstance(session, Response):
        return session
    shadows = service.shadow_quality(session, period)
    return _html(pages.quality_page(service.quality(session, period), period, shadows))


@router.get("/static/{name:path}", include_in_schema=False, dependencies=[PUBLIC])
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
        "roles": list(session.roles),
    }


@router.get("/api/results/{result_id}")
def get_result(result_id: ResultId, service: Service, session: SessionDep) -> dict[str, Any]:
    """Study, series, model, segments and AI volume of a result; records the view."""
    return service.view(session, result_id)


@router.get(f"/api/results/{{result_id}}/{IMAGE_FILE}")
def get_image(result_id: ResultId, service: Service, session: SessionDep) -> FileResponse:
    """The source series as NIfTI-1 on the review grid."""
    path = service.data_file(session, result_id, IMAGE_FILE)
    return FileResponse(path, media_type="application/octet-stream", headers=DATA_HEADERS)


@router.get(f"/api/results/{{result_id}}/{MASK_FILE}")
def get_mask(result_id: ResultId, service: Service, session: SessionDep) -> FileResponse:
    """The AI SEG as a gzipped NIfTI-1 label volume on the same grid."""
    path = service.data_file(session, result_id, MASK_FILE)
    return FileResponse(path, media_type="application/gzip", headers=DATA_HEADERS)


@router.get(f"/api/results/{{result_id}}/shadows/{{shadow_id}}/{MASK_FILE}")
def get_shadow_mask(
    result_id: ResultId, shadow_id: ShadowId, service: Service, session: SessionDep
) -> FileResponse:
    """A shadow model version's SEG of the same series (a second opinion, never delivered, never the
    decision) as a gzipped NIfTI-1 label volume on the same grid."""
    path = service.shadow_data_file(session, result_id, shadow_id)
    return FileResponse(path, media_type="application/gzip", headers=DATA_HEADERS)


@router.post("/api/results/{result_id}/decision")
def post_decision(
    result_id: ResultId, body: DecisionIn, service: Service, session: ReviewerSession, _changing: Changing
) -> dict[str, Any]:
    """Accept the AI result as it is, or reject it (a reason is required)."""
    return service.decide(session, result_id, ReviewDecision(body.decision), body.reason, body.view_id)


@router.post("/api/results/{result_id}/edit")
async def post_edit(
    result_id: ResultId,
    service: Service,
    session: ReviewerSession,
    _changing: Changing,
    request: Request,
    view_id: ViewId = None,
    reason: Annotated[str, Query(max_length=2000)] = "",
) -> dict[str, Any]:
    """Save the edited mask (the NiiVue drawing as NIfTI-1, optionally gzipped) as a new SEG."""
    body = await _limited_body(request, service.settings.review.max_edit_bytes)
    return await run_in_threadpool(service.save_edit, session, result_id, body, reason, view_id)


@router.get("/api/worklist")
def get_worklist(
    service: Service, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[dict[str, Any]]:
    """Results awaiting review (worklist sessions)."""
    return service.worklist(session, limit)


@router.get("/api/quality")
def get_quality(service: Service, session: SessionDep, period: Period = "week") -> list[dict[str, Any]]:
    """Per-model acceptance rate and mean Dice of edits, per period."""
    return service.quality(session, period)


@router.get("/api/quality/shadow")
def get_shadow_quality(
    service: Service, session: SessionDep, period: Period = "week"
) -> list[dict[str, Any]]:
    """Per model: Dice of production and of each shadow version vs the reviewed final masks, and
    their agreement, per period."""
    return service.shadow_quality(session, period)


def _signed_in(service: ReviewService, request: Request) -> ReviewSession | None:
    """The user's sign-on session (``oidc``) in the review cookie, or None."""
    try:
        session = service.session(request.cookies.get(COOKIE))
    except LaunchDeniedError:
        return None
    return session if session.login == "oidc" else None


def is_https(request: Request, settings: Settings) -> bool:
    """Whether browsers reach radloop over https: the request itself, ``review.base_url``, or a
    TLS-terminating proxy listed in ``review.trusted_proxies`` saying so in X-Forwarded-Proto."""
    if request.url.scheme == "https" or settings.review.base_url.startswith("https://"):
        return True
    peer = request.client.host if request.client is not None else ""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return peer in settings.review.trusted_proxies and forwarded == "https"


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
