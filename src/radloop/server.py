"""``radloop serve``: one process group running the SCP, the assembler, the local executor,
the outbox, the HTTP API (REST, DICOMweb, metrics) and the pollers of pull sources, on the
embedded defaults (SQLite, local worker processes).

Start-up validates everything first (settings, database schema, every pipeline file, every
destination a pipeline names) and refuses to start on the first problem, naming it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import FrameType

from sqlalchemy.engine import Engine

from radloop.api.context import AppContext
from radloop.api.serving import ApiServer
from radloop.connector.assembler import Assembler
from radloop.connector.outbound.outbox import Outbox
from radloop.connector.pull.puller import Puller
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.errors import ConfigError, PullError
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.executor import LocalExecutor
from radloop.pipelines.operators import builtin_registry
from radloop.viewer_launch.prefetch import ReviewPrefetcher

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
                f"{p.source}: pipeline {p.name} delivers to {missing}, "
                f"which are not in settings.destinations (configured: {sorted(known) or 'none'})"
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
    api: ApiServer | None = None

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
        if self.api is not None:
            self.api.stop()
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
    return Server(
        settings, engine, catalog, scp, assembler, LocalExecutor(settings, engine), Outbox(settings, engine)
    )


def start_pollers(server: Server, puller: Puller) -> None:
    """One polling thread per source with ``poll.enabled`` (first poll at once, then every interval)."""
    for src in server.settings.sources:
        if src.poll.enabled:
            poll = partial(_poll_once, puller, src.name)
            server._spawn(f"radloop-poll-{src.name}", poll, src.poll.interval_s)
            log.info("polling %s every %g s", src.name, src.poll.interval_s)


def _poll_once(puller: Puller, source: str) -> None:
    """A scheduled poll; a source that cannot be reached is logged and tried at the next interval."""
    try:
        puller.poll(source)
    except PullError as e:
        log.warning("poll of %s failed (next try in one interval): %s", source, e)


def serve(settings: Settings, on_ready: Callable[[Server], None] | None = None) -> None:
    """Run radloop until SIGTERM or SIGINT."""
    server = build_server(settings)
    server.assembler.resume()
    server.port = server.scp.start()
    server.executor.start()
    context = AppContext.from_parts(
        settings, server.engine, server.catalog, server.scp.store, server.assembler
    )
    if settings.api.enabled:
        server.api = ApiServer(settings, context)
        server.api.start()
    start_pollers(server, context.puller)
    if settings.review.prefetch:  # review data converted before the first launch
        server._spawn("radloop-review-prefetch", ReviewPrefetcher(settings, server.engine).tick, 2.0)

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    api = f", API http://{server.api.host}:{server.api.port}" if server.api else ""
    log.info(
        "radloop ready: DICOM %s:%s%s, data in %s", settings.dicom.host, server.port, api, settings.data_dir
    )
    if on_ready:
        on_ready(server)
    server.run_forever()
