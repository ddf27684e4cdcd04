"""``/dicomweb/workitems``: the AI worklist over UPS-RS (PS3.18 §11), radloop as the IHE AIW-I Task Manager.

* ``POST /dicomweb/workitems{?AffectedSOPInstanceUID}``: create a workitem (201, ``Content-Location``)
* ``GET /dicomweb/workitems{?match*,limit,offset}``: search; ``GET /dicomweb/workitems/{uid}``: retrieve
* ``POST /dicomweb/workitems/{uid}{?transaction}``: update
* ``PUT /dicomweb/workitems/{uid}/state``: claim (IN PROGRESS with a new Transaction UID), complete, cancel
* ``POST /dicomweb/workitems/{uid}/cancelrequest``: ask the owner to cancel (202)
* ``POST|DELETE /dicomweb/workitems/{uid}/subscribers/{aetitle}``: (un)subscribe, per workitem or
  for all (``uid`` = ``1.2.840.10008.5.1.4.34.5``); ``POST …/subscribers/{aetitle}/suspend`` there
* ``GET ws://…/dicomweb/subscribers/{aetitle}``: the notification channel (WebSocket), one
  ``application/dicom+json`` Event Report per message.

Bodies and answers are ``application/dicom+json``. A refusal is a problem document with the
status and the ``Warning: 299`` text PS3.18 names (e.g. 400 "The Transaction UID is incorrect.").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydicom import Dataset

from radloop import services
from radloop.api import audit_trail
from radloop.api.auth import Operator, Viewer, ViewerSocket
from radloop.api.deps import Ctx
from radloop.api.problems import problem, responses
from radloop.core import ups
from radloop.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["workitems"])
DICOM_JSON = "application/dicom+json"
MAX_BODY_BYTES = 1 << 20  # a workitem is a few kB; refuse anything near a megabyte
POLL_S = 0.3  # how often a notification channel looks for new events
T = TypeVar("T")


def _doc(ok: int, what: str, *codes: int, json_body: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: ``ok`` (with a DICOM JSON body if ``json_body``) and problems for ``codes``."""
    out = responses(*codes, 422)
    out[ok] = {"description": what, **({"content": {DICOM_JSON: {}}} if json_body else {})}
    return out


def _warning(request: Request | WebSocket, text: str) -> dict[str, str]:
    return {"Warning": f"299 {request.url.hostname or 'radloop'}: {text}"}


async def _run(request: Request, fn: Callable[..., T], *args: Any) -> T | Response:
    """Run a service call in the thread pool; a UPS refusal becomes its PS3.18 status and Warning."""
    try:
        return await run_in_threadpool(fn, *args)
    except ups.UpsError as e:
        return problem(e.status, str(e), _warning(request, e.warning) if e.warning else None)


async def _body(request: Request) -> Dataset | Response:
    """The request's single DICOM JSON dataset (empty when there is no body)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if not raw:
        return Dataset()
    if kind not in (DICOM_JSON, "application/json"):
        return problem(415, f"send {DICOM_JSON}, not {kind or 'no Content-Type'}")
    if len(raw) > MAX_BODY_BYTES:
        return problem(413, f"a workitem body is at most {MAX_BODY_BYTES} bytes")
    try:
        return ups.dataset_from_json(json.loads(raw))
    except (ValueError, ups.UpsError) as e:
        return problem(400, f"the body is not one DICOM JSON dataset: {e}")


def _dicom_json(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, media_type=DICOM_JSON, headers=headers)


def _check_ae(ae_title: str) -> Response | None:
    ok = (
        0 < len(ae_title) <= 16
        and ae_title.strip()
        and all(32 <= ord(c) < 127 and c != "\\" for c in ae_title)
    )
    return (
        None if ok else problem(400, "an AE title is 1 to 16 printable characters, not all spaces, no '\\'")
    )


@router.post("/workitems", status_code=201, responses=_doc(201, "Created", 400, 409, 413, 415))
async def create_workitem(request: Request, ctx: Ctx, _caller: Operator) -> Response:
    """Create a SCHEDULED workitem: ``ScheduledWorkitemCodeSequence`` names the pipeline (scheme
    ``99RADLOOP``), ``InputInformationSequence`` the study; its jobs are queued at once."""
    ds = await _body(request)
    if isinstance(ds, Response):
        return ds
    params = request.query_params
    uid = params.get("AffectedSOPInstanceUID") or params.get("workitem") or ""
    got = await _run(request, services.create_workitem, ctx.worklist, ds, uid)
    if isinstance(got, Response):
        return got
    url = f"{str(request.base_url).rstrip('/')}/dicomweb/workitems/{got}"
    return Response(status_code=201, headers={"Content-Location": url, "Location": url})


@router.get(
    "/workitems", responses={**_doc(200, "Matches", 400, json_body=True), 204: {"description": "None"}}
)
async def search_workitems(
    request: Request,
    ctx: Ctx,
    caller: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """Search the worklist: ``Keyword=value`` or ``Sequence.Keyword=value`` (``*`` and ``?`` match any)."""
    skip = {"limit", "offset", "includefield", "fuzzymatching"}
    matches = {k: v for k, v in request.query_params.items() if k not in skip}
    await run_in_threadpool(audit_trail.audit_query, request, ctx, caller)
    found = await _run(request, services.search_workitems, ctx.worklist, matches, limit, offset)
    if isinstance(found, Response):
        return found
    if not found:
        return Response(status_code=204)
    return _dicom_json([ds.to_json_dict() for ds in found])


@router.get("/workitems/{workitem}", responses=_doc(200, "The workitem", 404, json_body=True))
async def retrieve_workitem(workitem: str, request: Request, ctx: Ctx, _caller: Viewer) -> Response:
    """One workitem (never its Transaction UID); outputs under
    ``UnifiedProcedureStepPerformedProcedureSequence > OutputInformationSequence``."""
    ds = await _run(request, services.get_workitem, ctx.worklist, workitem)
    return ds if isinstance(ds, Response) else _dicom_json([ds.to_json_dict()])


@router.post("/workitems/{workitem}", responses=_doc(200, "Updated", 400, 404, 409, 413, 415))
async def update_workitem(workitem: str, request: Request, ctx: Ctx, _caller: Operator) -> Response:
    """Update a workitem; an IN PROGRESS one needs ``?transaction=<Transaction UID>`` (or ``?<UID>``)."""
    ds = await _body(request)
    if isinstance(ds, Response):
        return ds
    params = request.query_params
    tuid = params.get("transaction") or (request.url.query if "=" not in request.url.query else "")
    got = await _run(request, services.update_workitem, ctx.worklist, workitem, tuid, ds)
    return got if isinstance(got, Response) else Response(status_code=200)


@router.put("/workitems/{workitem}/state", responses=_doc(200, "Changed", 400, 404, 409, 413, 415))
async def change_workitem_state(workitem: str, request: Request, ctx: Ctx, caller: Operator) -> Response:
    """Claim (``IN PROGRESS`` with a new ``TransactionUID``), complete or cancel (with that UID)."""
    ds = await _body(request)
    if isinstance(ds, Response):
        return ds
    got = await _run(request, services.change_workitem_state, ctx.worklist, workitem, ds, caller.name)
    if isinstance(got, Response):
        return got
    if got is not None:
        return Response(
            status_code=200, headers=_warning(request, f"The UPS is already in the requested state of {got}.")
        )
    return Response(status_code=200)


@router.post(
    "/workitems/{workitem}/cancelrequest",
    status_code=202,
    responses=_doc(202, "Accepted", 400, 404, 409, 413, 415),
)
async def request_cancellation(workitem: str, request: Request, ctx: Ctx, _caller: Operator) -> Response:
    """Ask for a workitem to be canceled: radloop cancels its own jobs; an external owner is told."""
    ds = await _body(request)
    if isinstance(ds, Response):
        return ds
    reason = str(ds.get("ReasonForCancellation", "") or "")
    got = await _run(request, services.request_workitem_cancel, ctx.worklist, workitem, reason)
    if isinstance(got, Response):
        return got
    headers = _warning(request, "The UPS is already in the requested state of CANCELED.") if got else None
    return Response(status_code=202, headers=headers)


@router.post(
    f"/workitems/{ups.GLOBAL_SUBSCRIPTION_UID}/subscribers/{{aetitle}}/suspend",
    responses=_doc(200, "Suspended", 400, 404),
)
async def suspend_subscription(aetitle: str, request: Request, ctx: Ctx, _caller: Viewer) -> Response:
    """Stop subscribing ``aetitle`` to new workitems (its existing subscriptions stay)."""
    bad = _check_ae(aetitle)
    if bad:
        return bad
    got = await _run(request, services.suspend_worklist_subscription, ctx.worklist, aetitle)
    return got if isinstance(got, Response) else Response(status_code=200)


@router.post(
    "/workitems/{workitem}/subscribers/{aetitle}",
    status_code=201,
    responses=_doc(201, "Subscribed", 400, 403, 404),
)
async def subscribe(
    workitem: str, aetitle: str, request: Request, ctx: Ctx, _caller: Viewer, deletionlock: bool = False
) -> Response:
    """Subscribe ``aetitle`` to a workitem's events, or to every workitem's (``1.2.840.10008.5.1.4.34.5``)."""
    bad = _check_ae(aetitle)
    if bad:
        return bad
    if workitem == ups.FILTERED_SUBSCRIPTION_UID:
        text = "Filtered Worklist Subscriptions are not supported."
        return problem(403, text, _warning(request, text))
    got = await _run(request, services.subscribe_workitem, ctx.worklist, workitem, aetitle, deletionlock)
    if isinstance(got, Response):
        return got
    base = str(request.base_url).rstrip("/")
    channel = "ws" + base.removeprefix("http") + f"/dicomweb/subscribers/{aetitle}"
    return Response(status_code=201, headers={"Content-Location": channel})


@router.delete("/workitems/{workitem}/subscribers/{aetitle}", responses=_doc(200, "Unsubscribed", 400, 404))
async def unsubscribe(workitem: str, aetitle: str, request: Request, ctx: Ctx, _caller: Viewer) -> Response:
    """Remove ``aetitle``'s subscription (from the global one: all its subscriptions)."""
    bad = _check_ae(aetitle)
    if bad:
        return bad
    got = await _run(request, services.unsubscribe_workitem, ctx.worklist, workitem, aetitle)
    return got if isinstance(got, Response) else Response(status_code=200)


@router.websocket("/subscribers/{aetitle}")
@router.websocket("/ws/subscribers/{aetitle}")  # the path dcm4chee-arc uses
async def notification_channel(websocket: WebSocket, aetitle: str, _caller: ViewerSocket) -> None:
    """PS3.18 Open Notification Connection: Event Reports for ``aetitle``'s subscriptions, in order.

    Needs ``Authorization: Bearer <token>`` on the upgrade request (closed with 1008 otherwise).
    Each message is one Event Report (``application/dicom+json``); MessageID counts per channel.
    """
    ctx = websocket.app.state.radloop
    assert isinstance(ctx, Runtime)
    if _check_ae(aetitle) is not None:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    gone = asyncio.Event()
    watcher = asyncio.create_task(_until_closed(websocket, gone))
    cursor, message_id = 0, 0
    try:
        while not gone.is_set():
            events = await run_in_threadpool(services.workitem_events, ctx.worklist, aetitle, cursor)
            for event in events:
                cursor = event.id
                if event.report:
                    message_id += 1
                    report = dict(event.report)
                    report["00000110"] = {"vr": "US", "Value": [message_id]}
                    await websocket.send_text(json.dumps(report))
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), POLL_S)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the subscriber went away mid-send
    finally:
        watcher.cancel()


async def _until_closed(websocket: WebSocket, gone: asyncio.Event) -> None:
    """Read (and ignore) what the subscriber sends until it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    gone.set()
