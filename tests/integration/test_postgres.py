"""The same store, migrations and job queue on the real PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlmodel import Session, select

from radloop.connector.assembler import Assembler
from radloop.connector.store import InstanceStore, describe
from radloop.core import db, jobs
from radloop.core.models import Instance, Job, Series
from radloop.core.settings import Settings, load_settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry

pytestmark = [pytest.mark.peers]
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    name = f"radloop_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required (user postgres, trust auth): {e}")
    try:
        yield load_settings(
            data_dir=str(tmp_path),
            database={"url": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"},
            dicom={"listeners": [{"ae_title": "RADLOOP", "pipelines": ["brain-extraction"]}]},
        )
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_store_route_and_claim_on_postgresql(pg_settings: Settings, t1_series_dir: Path) -> None:
    import pydicom

    db.upgrade(pg_settings)
    db.upgrade(pg_settings)  # idempotent
    engine = db.make_engine(pg_settings)
    store = InstanceStore(pg_settings.data_dir, engine)
    files = sorted(t1_series_dir.iterdir())
    for f in files:
        ds = pydicom.dcmread(f)
        info = describe(ds, str(ds.file_meta.TransferSyntaxUID), "RADLOOP", "SCU")
        store.store(f.read_bytes(), info, ds)
    ds = pydicom.dcmread(files[0])
    store.store(
        files[0].read_bytes(), describe(ds, str(ds.file_meta.TransferSyntaxUID), "RADLOOP", "SCU"), ds
    )
    with Session(engine) as s:
        assert len(s.exec(select(Instance)).all()) == 170
        series = s.exec(select(Series)).one()
        assert series.instance_count == 170
    assembler = Assembler(pg_settings, engine, PipelineCatalog.load(pg_settings, builtin_registry()))
    assert assembler.complete(series.id, reason="test")  # type: ignore[arg-type]
    job = jobs.claim_next(engine, "pg-worker", 60)
    assert job is not None and job.pipeline == "brain-extraction"
    assert jobs.claim_next(engine, "other", 60) is None
    assert jobs.finish(engine, job.id, "pg-worker")  # type: ignore[arg-type]
    with Session(engine) as s:
        assert s.exec(select(Job)).one().state == "succeeded"
