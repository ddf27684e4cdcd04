"""Roles of a radloop process, for running radloop across several machines.

=========  ==========================================================================================
role       runs
=========  ==========================================================================================
``all``    everything below in one process group (``radloop serve``, the default; today's behaviour)
``ingest`` DICOM SCP, series assembler, pull-source pollers; with the celery executor, the job publisher
``api``    HTTP API (REST, DICOMweb, review app), AI worklist, review prefetch; the job publisher too
``outbox`` deliveries of results to destinations
``worker`` pipeline runs: ``radloop worker`` (Celery on RabbitMQ), or the local executor's processes
=========  ==========================================================================================

Every role but ``all`` shares its database with other processes that may run on other hosts, so
it refuses SQLite (a file on one host). Each role writes a heartbeat file that
``radloop health --role ROLE`` reads, together with the peers the role needs (database, broker,
its own DICOM or HTTP port), for a Kubernetes or systemd probe.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Literal

from radloop.core.errors import ConfigError
from radloop.core.settings import Settings

Role = Literal["all", "ingest", "api", "outbox", "worker"]
ROLES: tuple[Role, ...] = ("all", "ingest", "api", "outbox", "worker")
PARTS: dict[str, frozenset[str]] = {
    "all": frozenset({"ingest", "api", "outbox", "worker"}),
    "ingest": frozenset({"ingest"}),
    "api": frozenset({"api"}),
    "outbox": frozenset({"outbox"}),
    "worker": frozenset({"worker"}),
}
HEARTBEAT_S = 5.0
STALE_AFTER_S = 30.0


def parse_role(value: str) -> Role:
    """``value`` as a role; :class:`ConfigError` naming the roles otherwise."""
    for role in ROLES:
        if value == role:
            return role
    raise ConfigError(f"unknown role {value!r}; roles: {', '.join(ROLES)}")


def check_role(settings: Settings, role: Role) -> None:
    """Refuse a role that needs a database other hosts can reach when the database is SQLite."""
    if not settings.database_url.startswith("sqlite"):
        return
    if role != "all":
        raise ConfigError(
            f"role {role!r} shares the database with the other roles, which may run on other hosts; "
            "SQLite is a file on one host: set database.url to PostgreSQL "
            "(postgresql+psycopg://user@host/db), or run every role in one `radloop serve`"
        )
    if settings.workers.executor == "celery":
        raise ConfigError(
            "workers.executor 'celery' runs jobs on `radloop worker` processes, possibly on other hosts, "
            "which need the database too; SQLite is a file on one host: set database.url to PostgreSQL"
        )


def node_name(settings: Settings) -> str:
    """This process's name in heartbeats and leases: ``workers.name`` or the host name."""
    return settings.workers.name or socket.gethostname()


def heartbeat_path(settings: Settings, role: Role) -> Path:
    """``<data_dir>/run/<role>@<node>.alive``: touched every few seconds while the role runs."""
    return settings.data_dir / "run" / f"{role}@{node_name(settings)}.alive"


class Heartbeat:
    """Touches this role's heartbeat file (a tick of :func:`radloop.core.ticking.run_every`)."""

    def __init__(self, settings: Settings, role: Role) -> None:
        self.path = heartbeat_path(settings, role)

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{time.time():.3f}\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def health(settings: Settings, role: Role) -> list[tuple[str, str | None]]:
    """What ``role`` needs, each with None (fine) or what is wrong."""
    from radloop.core import db

    checks: list[tuple[str, str | None]] = []
    where = settings.database_url.split("@")[-1]
    try:
        db.require_current(settings)
        checks.append((f"database {where}", None))
    except ConfigError as e:
        checks.append((f"database {where}", str(e)))
    parts = PARTS[role]
    if settings.workers.executor == "celery" and parts & {"ingest", "api", "worker"}:
        from radloop.pipelines.celery_executor import broker_reachable

        broker = settings.workers.broker_url.get_secret_value().split("@")[-1]
        checks.append((f"broker {broker}", broker_reachable(settings)))
    if "ingest" in parts:
        checks.append((f"DICOM port {settings.dicom.port}", _echo(settings)))
    if "api" in parts and settings.api.enabled:
        checks.append((f"HTTP port {settings.api.port}", _http_health(settings)))
    checks.append((f"heartbeat {heartbeat_path(settings, role)}", _fresh(heartbeat_path(settings, role))))
    return checks


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _echo(settings: Settings) -> str | None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="RADLOOP-HEALTH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    called = settings.dicom.listeners[0].ae_title if settings.dicom.listeners else "ANY-SCP"
    assoc = ae.associate(_local(settings.dicom.host), settings.dicom.port, ae_title=called)
    if not assoc.is_established:
        return "no association (C-ECHO)"
    try:
        status = assoc.send_c_echo()
        return None if status and status.Status == 0 else "C-ECHO failed"
    finally:
        assoc.release()


def _http_health(settings: Settings) -> str | None:
    url = f"http://{_local(settings.api.host)}:{settings.api.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (our own port)
            return None if resp.status == 200 else f"{url} answered {resp.status}"
    except OSError as e:
        return f"{url}: {e}"


def _fresh(path: Path) -> str | None:
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "no heartbeat (is the role running on this host?)"
    return None if age <= STALE_AFTER_S else f"last heartbeat {age:.0f} s ago"
