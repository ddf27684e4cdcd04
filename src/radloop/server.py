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

from radloop.api.serving import ApiServer
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.dimse.ups_scp import UpsHandlers
from radloop.connector.pull.puller import Puller
from radloop.core.errors import ConfigError, PullError
from radloop.core.settings import Settings
from radloop.core.ticking import run_every
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.executor import LocalExecutor
from radloop.runtime import Runtime
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
    """The running parts of ``radloop serve``: a :class:`Runtime` plus the listeners and threads."""

    runtime: Runtime
    scp: StorageSCP
    executor: LocalExecutor
    port: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    api: ApiServer | None = None

    @property
    def settings(self) -> Settings:
        """The settings the runtime was built from."""
        return self.runtime.settings

    def run_forever(self) -> None:
        """Tick the assembler until :meth:`stop` (or SIGTERM/SIGINT via :func:`serve`)."""
        outbox = threading.Thread(
            target=self.runtime.outbox.run, args=(self.stop_event,), name="radloop-outbox", daemon=True
        )
        outbox.start()  # sends a job's results the moment its worker returns (runtime.results_ready)
        self._threads.append(outbox)
        self.spawn("radloop-worklist", self.runtime.worklist.tick, 0.5)  # jobs → UPS workitems + events
        run_every("assembler", self.runtime.assembler.tick, 1.0, self.stop_event)
        self._shutdown()

    def spawn(self, name: str, tick: Callable[[], object], interval_s: float) -> None:
        """Run ``tick`` every ``interval_s`` seconds in a daemon thread named ``name`` until :meth:`stop`."""
        t = threading.Thread(
            target=run_every, args=(name, tick, interval_s, self.stop_event), name=name, daemon=True
        )
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Ask :meth:`run_forever` and every spawned thread to finish after their current tick."""
        self.stop_event.set()
        self.runtime.results_ready.notify()  # the outbox waits on it, not on stop_event

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
    runtime = Runtime.build(settings, migrate=True).preload()
    check_destinations(settings, runtime.catalog)
    ups = UpsHandlers(runtime.worklist)  # the AI worklist over DIMSE too
    scp = StorageSCP(settings, runtime.store, runtime.assembler.on_association_end, ups)
    return Server(runtime, scp, runtime.executor())


def start_pollers(server: Server, puller: Puller) -> None:
    """One polling thread per source with ``poll.enabled`` (first poll at once, then every interval)."""
    for src in server.settings.sources:
        if src.poll.enabled:
            poll = partial(_poll_once, puller, src.name)
            server.spawn(f"radloop-poll-{src.name}", poll, src.poll.interval_s)
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
    runtime = server.runtime
    runtime.assembler.resume()
    # What a crash left (temp files, instances written but never acknowledged). On SQLite this is
    # the only node; with a shared database another ingest host may be writing right now, so files
    # younger than a minute are left for the next start.
    single_node = settings.database_url.startswith("sqlite")
    runtime.store.reconcile(min_age_s=0.0 if single_node else 60.0)
    server.port = server.scp.start()
    server.executor.start()
    if settings.api.enabled:
        server.api = ApiServer(runtime)
        server.api.start()
    start_pollers(server, runtime.puller)
    if settings.review.prefetch:  # review data converted before the first launch
        server.spawn("radloop-review-prefetch", ReviewPrefetcher(settings, runtime.engine).tick, 2.0)

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
