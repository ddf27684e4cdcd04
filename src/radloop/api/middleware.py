"""ASGI middleware of the API: time limits per request and headers every answer carries.

* **Body deadline** (``api.body_timeout_s``): a request body that has not arrived completely in
  time ends the request with 408 (and the connection), so a client trickling a body cannot hold
  a worker; reads after the body is complete (disconnect polling) are not limited.
* **Request deadline** (``api.request_timeout_s``): counted from the end of the body (or from the
  start, for a request whose body is never read); an answer that has not started by then is
  replaced by 503 and the request cancelled. A streaming answer that has started runs on.
* **Headers**: answers carry PHI, so every one gets ``Cache-Control: no-store`` (unless the route
  set its own) and ``X-Content-Type-Options: nosniff``.

Installed by :func:`install` (``create_app`` calls it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radloop.api.problems import problem
from radloop.core.settings import ApiSettings

log = logging.getLogger(__name__)
_POLL_S = 0.5


@dataclass
class _BodyState:
    """How far the request body has come."""

    started_at: float
    reading: bool = False
    done_at: float | None = None


class LimitsMiddleware:
    """Body and request deadlines, and the PHI headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, body_timeout_s: float, request_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.request_timeout_s = request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _BodyState(time.monotonic())
        started = asyncio.Event()

        async def guarded_receive() -> Message:
            if body.done_at is not None:
                return await receive()
            body.reading = True
            remaining = body.started_at + self.body_timeout_s - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within api.body_timeout_s ({self.body_timeout_s:g} s)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body.done_at = time.monotonic()
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
                headers = MutableHeaders(scope=message)
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        task: asyncio.Future[object] = asyncio.ensure_future(self.app(scope, guarded_receive, guarded_send))
        if not await self._started_in_time(task, started, body):
            task.cancel()
            log.warning(
                "%s %s: no answer within api.request_timeout_s (%g s); answered 503",
                scope.get("method"),
                scope.get("path"),
                self.request_timeout_s,
            )
            detail = f"no answer within api.request_timeout_s ({self.request_timeout_s:g} s)"
            await problem(503, detail, {"Connection": "close"})(scope, receive, guarded_send)
            return
        await task

    async def _started_in_time(
        self, task: asyncio.Future[object], started: asyncio.Event, body: _BodyState
    ) -> bool:
        """Wait until the answer starts (True) or the request deadline passes first (False).

        Bounded: never longer than ``body_timeout_s + request_timeout_s`` in all.
        """
        waiter: asyncio.Future[object] = asyncio.ensure_future(started.wait())
        pending: set[asyncio.Future[object]] = {task, waiter}
        try:
            while True:
                done, _ = await asyncio.wait(pending, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    return True
                now = time.monotonic()
                if now - body.started_at > self.body_timeout_s + self.request_timeout_s:
                    return False
                if body.reading and body.done_at is None:
                    continue  # the body deadline applies while it arrives
                since = body.done_at if body.done_at is not None else body.started_at
                if now - since > self.request_timeout_s:
                    return False
        finally:
            waiter.cancel()


def install(app: FastAPI, settings: ApiSettings) -> None:
    """Add the limits and headers middleware to ``app`` (outermost, so it also covers errors)."""
    app.add_middleware(
        LimitsMiddleware,
        body_timeout_s=settings.body_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )
