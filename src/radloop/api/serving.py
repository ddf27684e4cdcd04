"""Serving the API inside ``radloop serve``: uvicorn in a thread, on a socket bound up front.

Binding first makes the port known (and errors like "address in use" raised) before start-up
reports ready; port 0 picks a free port. uvicorn installs no signal handlers outside the main
thread, so ``radloop serve`` keeps its own SIGTERM handling.

Limits on the port (issue 12): connections and requests at once (``api.max_concurrency``, 503
above it), idle keep-alive (``api.keep_alive_s``), the size of request line and headers
(``api.max_header_bytes``), and a deadline for them (``api.header_timeout_s``, enforced by
:class:`HeaderDeadlineProtocol`: uvicorn has none, so a client sending its headers one byte a
second would hold a connection for ever). Body and answer deadlines live in
:mod:`radloop.api.middleware`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from radloop.api.app import create_app
from radloop.core.errors import ConfigError
from radloop.runtime import Runtime

log = logging.getLogger(__name__)


class ApiServer:
    """The HTTP server of the API, running in a daemon thread."""

    def __init__(self, runtime: Runtime) -> None:
        cfg = runtime.settings.api
        self.socket = _bind(cfg.host, cfg.port)
        self.host = cfg.host
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            create_app(runtime),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http=_protocol_class(cfg.header_timeout_s),
            timeout_keep_alive=max(1, round(cfg.keep_alive_s)),
            limit_concurrency=cfg.max_concurrency,
            h11_max_incomplete_event_size=cfg.max_header_bytes,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="radloop-api", daemon=True)

    def _run(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; returns once uvicorn accepts connections (bounded wait)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the API server did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        log.info("API listening on http://%s:%s", self.host, self.port)

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for its thread (bounded)."""
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self.socket.close()


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    The clock starts when the connection opens and again at the first byte of each following
    request; a connection still waiting for a complete request head when it runs out is closed.
    """

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # the first byte of a next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm_head_deadline()  # idle until the next request: the keep-alive timeout applies

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            assert self._head_deadline is not None
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.warning(
                "HTTP client %s: request head not complete within api.header_timeout_s (%g s); closed",
                self.client,
                self.header_timeout_s,
            )
            self.transport.close()


def _protocol_class(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """:class:`HeaderDeadlineProtocol` with this server's deadline (uvicorn builds the instances)."""
    return type("ApiHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"api: cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
