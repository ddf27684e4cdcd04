"""``radloop send`` / the C-STORE SCU (issue 13): several parallel associations, to DCMTK
``storescp`` and to a radloop SCP that refuses all but one; data sets split over PDUs arrive
byte for byte; a peer that aborts or goes silent fails what it should and nothing more."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from sqlmodel import Session, select

import peers
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.dimse.scu import send_files
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.models import Instance
from radloop.core.settings import load_settings

pytestmark = [pytest.mark.peers]


@pytest.fixture(scope="module")
def ct_40(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return peers.make_synthetic_ct_series(tmp_path_factory.mktemp("ct40"), n=40, rows=64, cols=64, seed=7)


def _data_set_bytes(path: Path) -> bytes:
    """The encoded data set after the File Meta Information."""
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_end:]


def test_parallel_associations_deliver_every_file_byte_for_byte(
    ct_40: list[Path], store_scp: peers.StoreSCP
) -> None:
    report = send_files(ct_40, "127.0.0.1", store_scp.port, store_scp.aet, "RADLOOP_SEND", associations=4)
    assert not report.failed and len(report.sent) == 40
    received = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in store_scp.files()}
    assert len(received) == 40
    for f in ct_40:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert _data_set_bytes(received[uid]) == _data_set_bytes(f), "the data set arrives unchanged"


def test_associations_the_peer_refuses_are_sent_over_one(ct_40: list[Path], tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        dicom={"host": "127.0.0.1", "port": 0, "min_free_bytes": 0, "max_associations": 1},
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    store = InstanceStore(settings.data_dir, engine)
    scp = StorageSCP(settings, store, lambda _ids, _ae: None)
    port = scp.start()
    try:
        report = send_files(ct_40, "127.0.0.1", port, "RADLOOP", "RADLOOP_SEND", associations=4)
    finally:
        scp.stop()
    assert not report.failed and len(report.sent) == 40
    with Session(engine) as s:
        assert len(s.exec(select(Instance)).all()) == 40


def test_data_sets_larger_than_the_peers_pdu_arrive_byte_for_byte(ct_40: list[Path], tmp_path: Path) -> None:
    scp = peers.StoreSCP(tmp_path / "received", max_pdu=4096).start()  # 8 KiB of pixels: 3 PDUs each
    try:
        report = send_files(ct_40[:10], "127.0.0.1", scp.port, scp.aet, "RADLOOP_SEND")
        received = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in scp.files()}
    finally:
        scp.stop()
    assert not report.failed and len(report.sent) == 10
    for f in ct_40[:10]:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert _data_set_bytes(received[uid]) == _data_set_bytes(f)


def test_a_peer_aborting_on_one_instance_fails_that_one_alone(ct_40: list[Path]) -> None:
    """A scripted pynetdicom peer that aborts the association on the third C-STORE: that file
    fails with the reason, the files after it go over a new association, and nothing waits for
    a timeout. (An outbox batch must not let one instance a PACS chokes on fail the others.)"""
    seen: list[str] = []

    def handle_store(event: evt.Event) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        if len(seen) == 3:
            event.assoc.abort()
        return 0x0000

    ae = AE(ae_title="ABORTS")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        port = server.server_address[1]
        started = time.monotonic()
        report = send_files(ct_40[:8], "127.0.0.1", port, "ABORTS", "RADLOOP_SEND", timeout_s=20)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert report.sent == [*ct_40[:2], *ct_40[3:8]]
    ((failed, why),) = report.failed
    assert failed == ct_40[2] and ("abort" in why or "closed" in why), why
    assert len(seen) == 8 and elapsed < 10


def test_an_unanswered_request_times_out_as_a_lost_association(ct_40: list[Path]) -> None:
    """A peer that accepts the association but never answers a C-STORE: the send gives up after
    ``timeout_s`` with the reason instead of hanging."""
    answered = threading.Event()

    def handle_store(event: evt.Event) -> int:
        answered.wait(10)  # longer than the sender's timeout
        return 0x0000

    ae = AE(ae_title="SILENT")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        report = send_files(ct_40[:3], "127.0.0.1", server.server_address[1], "SILENT", "X", timeout_s=1)
    finally:
        answered.set()
        server.shutdown()
    assert not report.sent and len(report.failed) == 3
    assert "timeout" in report.failed[0][1] and "association lost" in report.failed[1][1]
