"""``radloop serve``: one process group running the SCP, the assembler, the local executor and
the outbox on the embedded defaults (SQLite, local worker processes).

Start-up validates everything first (settings, database schema, every pipeline file, every
destination a pipeline names) and refuses to start on the first problem, naming it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy.engine import Engine

from radloop.connector.assembler import Assembler
from radloop.connector.outbox import Outbox
from radloop.connector.scp import StorageSCP
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.executor import LocalExecutor
from radloop.pipelines.operators import builtin_registry

log = logging.getLogger(__name__)


def check_destinations(settings: Settings, catalog: PipelineCatalog) -> None:
    """Every destination a pipeline names must be configured."""
    known = {d.name for d in settings.destinations}
    for name in settings.pipelines.destinations:
        if name != "*" and name not in catalog:
            raise ConfigError(f"pipelines.destinations names pipeline {name!r}, which is not loaded")
    for p in catalog.all():
        wanted = settings.pipelines.destinations_for(p.name, p.spec.destinations)
        missing = [d for d in wanted if d not in known]
        if missing:
            raise ConfigError(
                f"{p.source}: pipeline {p.name} delivers to {missing}, which are not in settings.destinations "
                f"(configured: {sorted(known) or 'none'})"
            )


@dataclass
class Server:
    """The running parts of ``radloop serve``."""

    settings: Settings
    engine: Engine
    catalog: PipelineCatalog
    scp: StorageSCP
    assembler: Assembler
    executor: LocalExecutor
    outbox: Outbox
    port: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def run_forever(self) -> None:
        """Tick the assembler until :meth:`stop` (or SIGTERM/SIGINT via :func:`serve`)."""
        self._spawn("radloop-outbox", self.outbox.tick, self.settings.outbox.poll_interval_s)
        while not self.stop_event.is_set():
            try:
                self.assembler.tick()
            except Exception:  # keep serving; the next tick retries
                log.exception("assembler tick failed")
            self.stop_event.wait(1.0)
        self._shutdown()

    def _spawn(self, name: str, tick: Callable[[], object], interval: float) -> None:
        def loop() -> None:
            while not self.stop_event.is_set():
                try:
                    tick()
                except Exception:
                    log.exception("%s tick failed", name)
                self.stop_event.wait(interval)

        t = threading.Thread(target=loop, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()

    def _shutdown(self) -> None:
        log.info("shutting down")
        self.scp.stop()
        self.executor.stop(wait=False)
        for t in self._threads:
            t.join(timeout=10)


def build_server(settings: Settings) -> Server:
    """Validate and wire every part; nothing listens until :meth:`Server.run_forever`'s caller starts it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    catalog = PipelineCatalog.load(settings, builtin_registry())
    check_destinations(settings, catalog)
    store = InstanceStore(settings.data_dir, engine, settings.dicom.min_free_bytes)
    assembler = Assembler(settings, engine, catalog)
    scp = StorageSCP(settings, store, assembler.on_association_end)
    return Server(settings, engine, catalog, scp, assembler, LocalExecutor(settings, engine), Outbox(settings, engine))


def serve(settings: Settings, on_ready: Callable[[Server], None] | None = None) -> None:
    """Run radloop until SIGTERM or SIGINT."""
    server = build_server(settings)
    server.assembler.resume()
    server.port = server.scp.start()
    server.executor.start()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    log.info("radloop ready: DICOM %s:%s, data in %s", settings.dicom.host, server.port, settings.data_dir)
    if on_ready:
        on_ready(server)
    server.run_forever()
