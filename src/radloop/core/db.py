"""Database engine and schema migrations (Alembic; SQLite in WAL mode by default, PostgreSQL too)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, create_engine, select

from radloop.core.errors import ConfigError
from radloop.core.models import Instance
from radloop.core.settings import Settings

log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x7261646C  # "radl": PostgreSQL advisory lock held while migrating
MAX_ROW_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL BIGINT hold: larger ids are refused (422)


def make_engine(settings: Settings) -> Engine:
    """An engine for ``settings.database_url``; SQLite gets WAL, a busy timeout and NORMAL sync."""
    url = settings.database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=settings.database.echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, echo=settings.database.echo, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(
        "PRAGMA synchronous=NORMAL"
    )  # WAL + NORMAL: durable at checkpoint; files are fsynced separately
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings) -> None:
    """Bring the database schema to the newest migration (idempotent)."""
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        command.upgrade(alembic_config(settings.database_url), "head")
        return
    # Several roles on several hosts may start together: one migrates at a time (an advisory lock).
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK})
            try:
                command.upgrade(alembic_config(settings.database_url), "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK})
    finally:
        engine.dispose()


def require_current(settings: Settings) -> None:
    """Refuse a database that is missing or behind the newest migration, without creating or changing it.

    Read-only commands call this instead of :func:`upgrade`: reading must not migrate a schema
    that a running server of another version may still use. :class:`ConfigError` says what to run.
    """
    where = settings.database_url.split("@")[-1]
    hint = "run `radloop db upgrade` or `radloop serve` first"
    url = make_url(settings.database_url)
    on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if on_file and not Path(str(url.database)).exists():
        raise ConfigError(f"no database at {where}: {hint}")
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as e:
        raise ConfigError(f"cannot read the database at {where} ({type(e).__name__}): {hint}") from e
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        raise ConfigError(f"the database at {where} has schema {current or 'none'}, not {head}: {hint}")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def series_instances(s: Session, series_id: int) -> Sequence[Instance]:
    """The stored instances of a series, in InstanceNumber order (then arrival order)."""
    return s.exec(
        select(Instance)
        .where(Instance.series_id == series_id)
        .order_by(col(Instance.instance_number), col(Instance.id))
    ).all()
