"""The composition root: :meth:`Runtime.build` is the one place radloop's object graph is built.

settings → engine → pipeline catalog → instance store → assembler → puller, read index, metrics
registry, outbox, the process's wake-up channels and model cache, and a factory of local executors.
``radloop serve`` (:mod:`radloop.server`), the HTTP API (:func:`radloop.api.create_app`), every CLI
command and each worker process take what they need from a :class:`Runtime`; nothing else calls
these constructors.

Parts are built on first use and then shared, so a command picks the parts it needs: ``pipelines
list`` loads the catalog and never opens the database; ``jobs list`` opens the database and never
loads a pipeline. A server calls :meth:`Runtime.preload`, which builds (and so validates) them all at
start, before any thread shares them.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from radloop.connector.assembler import Assembler
from radloop.connector.dicomweb.qido import ReadIndex
from radloop.connector.dicomweb.ups import Worklist
from radloop.connector.outbound.audit_repository import AuditSender
from radloop.connector.outbound.outbox import Outbox
from radloop.connector.pull.priors import PriorFinder
from radloop.connector.pull.puller import Puller
from radloop.connector.sanity import InstanceLimits
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.metrics import registry_for
from radloop.core.settings import Settings
from radloop.inference.resolve import ModelResolver
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.executor import LocalExecutor
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.wakeup import Wakeup
from radloop.pipelines.warm import MB, ModelCache

OWNER_ONLY_UMASK = 0o077
GROUP_UMASK = 0o007


def restrict_permissions(settings: Settings) -> None:
    """Make every file and folder this process creates owner-only (or owner + group).

    Set once per process, before anything is written: data_dir holds PHI (instances, results,
    job folders, the review cache, exports, the SQLite database with its -wal and -shm), and
    a umask is the one setting no code path that creates a file can forget. Folders become
    0700 (0770 with ``data_dir_group_access``), files 0600 (0660).
    """
    os.umask(GROUP_UMASK if settings.data_dir_group_access else OWNER_ONLY_UMASK)


def _tighten(settings: Settings) -> None:
    """Bring an existing data_dir and SQLite database made before the umask to the same modes."""
    group = settings.data_dir_group_access
    dir_mode, file_mode = (0o770, 0o660) if group else (0o700, 0o600)
    if settings.data_dir.is_dir() and settings.data_dir.stat().st_uid == os.getuid():
        settings.data_dir.chmod(dir_mode)
    if settings.database_url.startswith("sqlite:///"):
        db_file = Path(settings.database_url.removeprefix("sqlite:///"))
        for path in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm")):
            if path.is_file() and path.stat().st_uid == os.getuid():
                path.chmod(file_mode)


class Runtime:
    """radloop's shared parts for one process, built from one :class:`Settings`."""

    SHARED_PARTS = (
        "engine",
        "catalog",
        "store",
        "assembler",
        "puller",
        "index",
        "metrics",
        "outbox",
        "worklist",
        "audit_sender",
    )

    def __init__(self, settings: Settings, *, migrated: bool) -> None:
        """Use :meth:`build`; ``migrated`` says the schema was just brought to the newest migration."""
        self.settings = settings
        self._migrated = migrated

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool) -> Runtime:
        """The runtime for ``settings``.

        ``migrate=True`` (serve, and commands that write) creates the data folder and brings the
        schema to the newest migration now. ``migrate=False`` (read-only commands, worker processes)
        changes nothing: opening the database refuses one that is missing or not migrated, saying
        to run ``radloop db upgrade`` (:func:`radloop.core.db.require_current`).
        """
        restrict_permissions(settings)
        if migrate:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            db.upgrade(settings)
            _tighten(settings)
        return cls(settings, migrated=migrate)

    def preload(self) -> Runtime:
        """Build every shared part now: pipelines validated, database checked, before threads share them."""
        for name in self.SHARED_PARTS:
            getattr(self, name)
        return self

    @cached_property
    def engine(self) -> Engine:
        """The database engine (its schema checked first unless :meth:`build` just migrated it)."""
        if not self._migrated:
            db.require_current(self.settings)
        return db.make_engine(self.settings)

    @cached_property
    def catalog(self) -> PipelineCatalog:
        """Every pipeline (reference ones and the configured folders), loaded and validated."""
        return PipelineCatalog.load(self.settings, builtin_registry())

    @cached_property
    def store(self) -> InstanceStore:
        """The instance store (files under ``data_dir/instances`` and their index rows)."""
        dicom = self.settings.dicom
        limits = InstanceLimits.from_settings(dicom)
        return InstanceStore(
            self.settings.data_dir,
            self.engine,
            dicom.min_free_bytes,
            limits,
            durability=dicom.durability,
            group_fsync_ms=dicom.group_fsync_ms,
        )

    @cached_property
    def assembler(self) -> Assembler:
        """Series completion and routing to pipelines."""
        return Assembler(self.settings, self.engine, self.catalog, self.jobs_queued)

    @cached_property
    def puller(self) -> Puller:
        """Pulls studies from PACS sources into :attr:`store`, completing series with :attr:`assembler`."""
        return Puller(self.settings, self.engine, self.store, self.assembler.on_association_end)

    @cached_property
    def priors(self) -> PriorFinder:
        """Finds and retrieves the prior studies that study-level jobs ask for, through :attr:`puller`."""
        return PriorFinder(self.engine, self.puller)

    @cached_property
    def index(self) -> ReadIndex:
        """What QIDO-RS and WADO-RS read: the stored instances and results."""
        return ReadIndex(self.engine, self.settings.data_dir)

    @cached_property
    def metrics(self) -> CollectorRegistry:
        """The Prometheus registry of this process (no global registry)."""
        return registry_for(self.engine)

    @cached_property
    def outbox(self) -> Outbox:
        """Deliveries of results to destinations, retried with backoff."""
        return Outbox(self.settings, self.engine, self.results_ready)

    @cached_property
    def worklist(self) -> Worklist:
        """The AI worklist: jobs as UPS workitems, for UPS-RS clients."""
        return Worklist(self.settings, self.engine, self.catalog)

    @cached_property
    def audit_sender(self) -> AuditSender | None:
        """Sends the queued audit messages to ``audit.repository``; None when none is configured."""
        if self.settings.audit.repository is None:
            return None
        return AuditSender(self.settings.audit, self.engine)

    @cached_property
    def jobs_queued(self) -> Wakeup:
        """Jobs were queued in this process: the :attr:`assembler` notifies, the local executor waits."""
        return Wakeup()

    @cached_property
    def results_ready(self) -> Wakeup:
        """A job's results (and their deliveries) were committed: the local executor notifies when a
        worker returns one, the :attr:`outbox` sends at once."""
        return Wakeup()

    @cached_property
    def models(self) -> ModelCache:
        """This process's loaded models, least recently used evicted beyond ``workers.model_memory_mb``
        (a worker process warms it at start and its job runner resolves models through it)."""
        budget = self.settings.workers.model_memory_mb * MB
        return ModelCache(ModelResolver.from_settings(self.settings), budget)

    def executor(self) -> LocalExecutor:
        """A new local executor (dispatcher thread + worker processes); the caller starts and stops it."""
        return LocalExecutor(self.settings, self.engine, self.jobs_queued, self.results_ready)
