"""``radloop serve``: one process group running the SCP, the assembler, the local executor,
the outbox, the HTTP API (REST, DICOMweb, metrics) and the pollers of pull sources, on the
embedded defaults (SQLite, local worker processes). ``--role`` runs one part of it
(:mod:`radloop.node_roles`), for several hosts sharing PostgreSQL, RabbitMQ and the data folder.

Start-up validates everything first (settings, database schema, every pipeline file, every
destination a pipeline names) and refuses to start on the first problem, naming it.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import FrameType

from radloop.api.serving import ApiServer
from radloop.connector.dimse.listeners import ListenerProcesses
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.dimse.tls import check_dicom_tls
from radloop.connector.dimse.ups_scp import UpsHandlers
from radloop.connector.pull.puller import Puller
from radloop.core import atna
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError, PullError
from radloop.core.settings import Settings
from radloop.core.ticking import run_every
from radloop.node_roles import HEARTBEAT_S, PARTS, Heartbeat, Role, check_role
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.celery_executor import JobPublisher, run_worker
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
    scp: StorageSCP | None  # None when the role does not ingest
    executor: LocalExecutor | None  # None when jobs run elsewhere (another role, or celery workers)
    port: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    api: ApiServer | None = None
    listeners: ListenerProcesses | None = None
    role: Role = "all"
    publisher: JobPublisher | None = None  # celery executor: sends queued job ids to RabbitMQ

    @property
    def settings(self) -> Settings:
        """The settings the runtime was built from."""
        return self.runtime.settings

    def run_forever(self) -> None:
        """Tick the assembler until :meth:`stop` (or SIGTERM/SIGINT via :func:`serve`)."""
        parts = PARTS[self.role]
        heartbeat = Heartbeat(self.settings, self.role)
        self.spawn("radloop-heartbeat", heartbeat.beat, HEARTBEAT_S)
        if "outbox" in parts:
            outbox = threading.Thread(
                target=self.runtime.outbox.run, args=(self.stop_event,), name="radloop-outbox", daemon=True
            )
            outbox.start()  # sends a job's results the moment its worker returns (runtime.results_ready)
            self._threads.append(outbox)
            sender = self.runtime.audit_sender
            if sender is not None:  # queued audit messages (of every role) → the syslog audit repository
                self.spawn("radloop-audit", sender.tick, self.settings.audit.send_interval_s)
        if "api" in parts:
            self.spawn("radloop-worklist", self.runtime.worklist.tick, 0.5)  # jobs → UPS workitems + events
        if self.publisher is not None:  # woken when this process queues a job, else polls
            args = ("publisher", self.publisher.tick, self.settings.workers.poll_interval_s, self.stop_event)
            t = threading.Thread(
                target=run_every, args=(*args, self.runtime.jobs_queued.wait), name="radloop-publisher"
            )
            t.start()
            self._threads.append(t)
        if "ingest" in parts:
            run_every("assembler", self.runtime.assembler.tick, 1.0, self.stop_event)
        else:
            self.stop_event.wait()
        self._shutdown()
        heartbeat.clear()

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
        self.runtime.jobs_queued.notify()  # the celery publisher waits on it
        self.runtime.results_ready.notify()  # the outbox waits on it, not on stop_event

    def _shutdown(self) -> None:
        log.info("shutting down")
        if self.api is not None:
            self.api.stop()
        if self.scp is not None:
            self.scp.stop()
        if self.listeners is not None:
            self.listeners.stop()
        self.runtime.store.close()  # commit durability: the last group fsync
        if self.executor is not None:
            self.executor.stop(wait=False)
        for t in self._threads:
            t.join(timeout=10)
        if self.publisher is not None:
            self.publisher.close()
        record_application_activity(self.runtime, started=False)
        sender = self.runtime.audit_sender
        if (
            sender is not None and "outbox" in PARTS[self.role]
        ):  # the stop message (and the rest) now if it can
            sender.tick()


def record_application_activity(runtime: Runtime, *, started: bool) -> None:
    """Audit (PS3.15 A.5.3.1) that radloop started or stops, with its AE titles and the OS user."""
    titles = [lst.ae_title for lst in runtime.settings.dicom.listeners]
    with session_scope(runtime.engine) as s:
        atna.record(s, runtime.settings.audit, atna.application_activity(started, titles, getpass.getuser()))


def record_configuration_change(runtime: Runtime) -> None:
    """A Security Alert (Software Configuration) when the settings differ from the last start's.

    The fingerprint is an HMAC (keyed by ``secret_key``) of the settings with their secrets, kept in
    ``data_dir/config.fingerprint``: a changed password or key counts as a change too."""
    settings = runtime.settings
    path = settings.data_dir / "config.fingerprint"
    key = settings.secret_key.get_secret_value().encode("utf-8")
    digest = hmac.new(key, settings.to_worker_json().encode("utf-8"), hashlib.sha256).hexdigest()
    previous = path.read_text().strip() if path.is_file() else ""
    if previous and previous != digest:
        alert = atna.security_alert(
            atna.person(getpass.getuser()),
            atna.SOFTWARE_CONFIGURATION,
            "radloop:settings",
            "the settings differ from those of the last start",
        )
        with session_scope(runtime.engine) as s:
            atna.record(s, settings.audit, alert)
    path.write_text(digest + "\n")


def build_server(settings: Settings, role: Role = "all") -> Server:
    """Validate and wire every part ``role`` runs; nothing listens until :meth:`Server.run_forever`'s
    caller starts it."""
    check_role(settings, role)
    check_dicom_tls(settings)  # certificate, key and CA files readable and usable: fail before anything else
    runtime = Runtime.build(settings, migrate=True).preload()
    check_destinations(settings, runtime.catalog)
    parts, celery = PARTS[role], settings.workers.executor == "celery"
    scp = None
    if "ingest" in parts:
        ups = UpsHandlers(runtime.worklist)  # the AI worklist over DIMSE too
        scp = StorageSCP(settings, runtime.store, runtime.assembler.on_association_end, ups)
    executor = runtime.executor() if "worker" in parts and not celery else None
    publisher = (
        JobPublisher(settings, runtime.engine, runtime.catalog)
        if celery and parts & {"ingest", "api"}
        else None
    )
    return Server(runtime, scp, executor, role=role, publisher=publisher)


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


def serve(settings: Settings, on_ready: Callable[[Server], None] | None = None, role: Role = "all") -> None:
    """Run radloop (every role, or the one given) until SIGTERM or SIGINT."""
    if role == "worker" and settings.workers.executor == "celery":
        serve_celery_worker(settings)
        return
    server = build_server(settings, role)
    runtime = server.runtime
    parts = PARTS[role]
    record_application_activity(runtime, started=True)
    record_configuration_change(runtime)
    if server.scp is not None:
        runtime.assembler.resume()
        # What a crash left (temp files, instances written but never acknowledged). On SQLite this is
        # the only node; with a shared database another ingest host may be writing right now, so files
        # younger than a minute are left for the next start.
        single_node = settings.database_url.startswith("sqlite")
        runtime.store.reconcile(min_age_s=0.0 if single_node else 60.0)
        processes = settings.dicom.processes()
        server.port = server.scp.start(reuse_port=processes > 1)
        if processes > 1:  # the others on the same port; their association ends come back here
            server.listeners = ListenerProcesses(settings, server.port, server.scp.tracker)
            server.listeners.start(processes - 1)
    if server.executor is not None:
        server.executor.start()
    if server.listeners is not None:
        server.listeners.wait_ready()
    if settings.api.enabled and "api" in parts:
        server.api = ApiServer(runtime)
        server.api.start()
    if "ingest" in parts:
        start_pollers(server, runtime.puller)
    if settings.review.prefetch and "api" in parts:  # review data converted before the first launch
        server.spawn("radloop-review-prefetch", ReviewPrefetcher(settings, runtime.engine).tick, 2.0)

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    api = f", API http://{server.api.host}:{server.api.port}" if server.api else ""
    if role == "all":
        log.info(
            "radloop ready: DICOM %s:%s%s, data in %s",
            settings.dicom.host,
            server.port,
            api,
            settings.data_dir,
        )
    else:
        dicom = f"DICOM {settings.dicom.host}:{server.port}" if server.scp is not None else ""
        where = ", ".join(x for x in (dicom, api.removeprefix(", "), f"data in {settings.data_dir}") if x)
        log.info("radloop ready (role %s): %s", role, where)
    if on_ready:
        on_ready(server)
    server.run_forever()


def serve_celery_worker(settings: Settings) -> None:
    """The worker role on the celery executor: migrate and validate, then consume until SIGTERM."""
    check_role(settings, "worker")
    runtime = Runtime.build(settings, migrate=True)
    check_destinations(settings, runtime.catalog)  # every pipeline validated before the pool starts
    runtime.engine.dispose()  # pool processes open their own connections
    heartbeat = Heartbeat(settings, "worker")
    stop = threading.Event()

    def ready() -> None:
        threading.Thread(
            target=run_every, args=("heartbeat", heartbeat.beat, HEARTBEAT_S, stop), daemon=True
        ).start()
        log.info(
            "radloop ready (role worker): queues %s, data in %s", settings.workers.queues, settings.data_dir
        )

    def stopping() -> None:
        stop.set()
        heartbeat.clear()

    run_worker(settings, on_ready=ready, on_stop=stopping)
