"""The outbox's C-STORE destination (issue 13): a batch of due results goes over the
destination's ``associations`` parallel associations, each delivery keeping its own outcome;
a peer that refuses the extra associations gets everything over fewer."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

import peers
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.outbound.outbox import Outbox
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.db import session_scope
from radloop.core.models import Delivery, DeliveryState, Instance, Job, Result, Series, Study
from radloop.core.settings import Settings, load_settings

pytestmark = [pytest.mark.peers]
RESULTS = 12


def _settings(tmp_path: Path, port: int, ae_title: str, associations: int) -> Settings:
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        destinations=[
            {
                "kind": "dicom",
                "name": "pacs",
                "host": "127.0.0.1",
                "port": port,
                "ae_title": ae_title,
                "associations": associations,
                "timeout_s": 20,
            }
        ],
    )
    db.upgrade(settings)
    return settings


def _queue_results(settings: Settings, engine: Engine, files: list[Path]) -> list[int]:
    """One job with a result per file (copied under data_dir) and a pending delivery each."""
    ids = []
    with session_scope(engine) as s:
        study = Study(study_instance_uid="1.2.3.4")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid="1.2.3.4.1")  # type: ignore[arg-type]
        s.add(series)
        s.flush()
        job = Job(pipeline="p", series_id=series.id, idempotency_key="k")  # type: ignore[arg-type]
        s.add(job)
        s.flush()
        for f in files:
            target = settings.data_dir / "results" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.exists():
                target.write_bytes(f.read_bytes())
            uid = f"1.2.3.4.9.{len(ids)}"
            result = Result(
                job_id=job.id,  # type: ignore[arg-type]
                kind="SC",
                sop_instance_uid=uid,
                path=str(target.relative_to(settings.data_dir)),
            )
            s.add(result)
            s.flush()
            delivery = Delivery(result_id=result.id, destination="pacs")  # type: ignore[arg-type]
            s.add(delivery)
            s.flush()
            ids.append(int(delivery.id))  # type: ignore[arg-type]
    return ids


def _rows(engine: Engine) -> dict[int, Delivery]:
    with Session(engine) as s:
        return {int(d.id): d for d in s.exec(select(Delivery)).all()}  # type: ignore[arg-type]


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return peers.make_synthetic_ct_series(tmp_path / "ct", n=RESULTS, rows=64, cols=64, seed=3)


def test_a_batch_goes_over_parallel_associations_each_delivery_with_its_own_outcome(
    ct: list[Path], store_scp: peers.StoreSCP, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, store_scp.port, store_scp.aet, associations=4)
    engine = db.make_engine(settings)
    missing = tmp_path / "ct" / "gone.dcm"  # its result's file is not there: that delivery fails alone
    ids = _queue_results(settings, engine, [*ct, missing])
    before = store_scp.log_text().count("Association Received")

    assert Outbox(settings, engine).tick() == RESULTS

    rows = _rows(engine)
    sent = [rows[i] for i in ids[:RESULTS]]
    assert all(r.state == DeliveryState.sent and r.attempts == 1 and not r.last_error for r in sent)
    failed = rows[ids[-1]]
    assert failed.state == DeliveryState.pending and failed.attempts == 1
    assert "not a readable DICOM file" in failed.last_error and failed.next_attempt_at > failed.created_at
    received = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in store_scp.files()}
    assert received == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct}
    assert store_scp.log_text().count("Association Received") - before == 4
    engine.dispose()


def test_a_peer_refusing_extra_associations_gets_the_batch_over_fewer(ct: list[Path], tmp_path: Path) -> None:
    scp_settings = load_settings(
        data_dir=str(tmp_path / "pacs"),
        dicom={"host": "127.0.0.1", "port": 0, "min_free_bytes": 0, "max_associations": 1},
    )
    db.upgrade(scp_settings)
    scp_engine = db.make_engine(scp_settings)
    scp = StorageSCP(scp_settings, InstanceStore(scp_settings.data_dir, scp_engine), lambda _ids, _ae: None)
    port = scp.start()
    try:
        settings = _settings(tmp_path, port, "RADLOOP", associations=4)
        engine = db.make_engine(settings)
        ids = _queue_results(settings, engine, ct)
        assert Outbox(settings, engine).tick() == RESULTS
    finally:
        scp.stop()
    rows = _rows(engine)
    assert all(rows[i].state == DeliveryState.sent and rows[i].attempts == 1 for i in ids)
    with Session(scp_engine) as s:
        assert len(s.exec(select(Instance)).all()) == RESULTS
    engine.dispose()
    scp_engine.dispose()


def test_an_unreachable_peer_leaves_every_delivery_of_the_batch_pending_with_the_reason(
    ct: list[Path], tmp_path: Path
) -> None:
    settings = _settings(tmp_path, peers.free_port(), "PACS", associations=4)
    engine = db.make_engine(settings)
    ids = _queue_results(settings, engine, ct[:5])
    assert Outbox(settings, engine).tick() == 0
    rows = _rows(engine)
    for i in ids:
        assert rows[i].state == DeliveryState.pending and rows[i].attempts == 1
        assert "no association" in rows[i].last_error
    engine.dispose()


def test_an_instance_the_peer_aborts_on_fails_alone_in_the_batch(ct: list[Path], tmp_path: Path) -> None:
    """A scripted pynetdicom peer aborts the association whenever it is sent one particular
    instance: that delivery stays pending with the reason, every other one of the batch is sent."""
    bad = str(pydicom.dcmread(ct[1], stop_before_pixels=True).SOPInstanceUID)

    def handle_store(event: evt.Event) -> int:
        if str(event.request.AffectedSOPInstanceUID) == bad:
            event.assoc.abort()
        return 0x0000

    ae = AE(ae_title="PICKY")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        settings = _settings(tmp_path, server.server_address[1], "PICKY", associations=2)
        engine = db.make_engine(settings)
        ids = _queue_results(settings, engine, ct[:6])
        assert Outbox(settings, engine).tick() == 5
    finally:
        server.shutdown()
    rows = _rows(engine)
    assert all(r.attempts == 1 for r in rows.values())
    assert [i for i in ids if rows[i].state == DeliveryState.sent] == [i for n, i in enumerate(ids) if n != 1]
    error = rows[ids[1]].last_error
    assert rows[ids[1]].state == DeliveryState.pending and ("abort" in error or "closed" in error), error
    engine.dispose()
