"""Serving the API inside ``radloop serve``: uvicorn in a thread, on a socket bound up front.

Binding first makes the port known (and errors like "address in use" raised) before start-up
reports ready; port 0 picks a free port. uvicorn installs no signal handlers outside the main
thread, so ``radloop serve`` keeps its own SIGTERM handling.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

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
