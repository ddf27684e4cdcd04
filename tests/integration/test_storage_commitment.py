"""Storage Commitment Push Model (issue 13): a real StorageSCP on 127.0.0.1, real TCP, DCMTK
``storescu`` sends the instances, pynetdicom is the commitment SCU (DCMTK has no such tool).

170 instances are made; 169 are sent; the commitment request names all 170. The result must
list 169 in the Referenced SOP Sequence and 1 in the Failed SOP Sequence with reason 0x0112,
on the requesting association while it is open, else on a new association to the requester's
configured address. Run in ``commit`` durability mode, where the result waits for the fsyncs.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from sqlmodel import Session, select

import peers
from radloop.connector.dimse.scp import StorageSCP
from radloop.core.models import Instance
from radloop.core.settings import load_settings
from radloop.runtime import Runtime

pytestmark = [pytest.mark.peers]

HOST = "127.0.0.1"
SCU_AE = "MODALITY_SC"
LATE_AE = "MODALITY_NEW"  # wants its reports on a new association
REPORT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def ct_170(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """170 small CT slices of one series."""
    return peers.make_synthetic_ct_series(tmp_path_factory.mktemp("ct170"), n=170, rows=32, cols=32, seed=3)


class Running:
    def __init__(self, tmp_path: Path, report_port: int) -> None:
        self.settings = load_settings(
            data_dir=str(tmp_path / "data"),
            dicom={
                "host": HOST,
                "port": 0,
                "min_free_bytes": 0,
                "durability": "commit",
                "group_fsync_ms": 20,
                "commitment_peers": [
                    {"ae_title": SCU_AE, "host": HOST, "port": report_port},
                    {"ae_title": LATE_AE, "host": HOST, "port": report_port, "always_new_association": True},
                ],
            },
        )
        runtime = Runtime.build(self.settings, migrate=True)  # the store in its durability mode
        self.engine, self.store = runtime.engine, runtime.store
        self.scp = StorageSCP(self.settings, self.store, lambda _ids, _called: None)
        self.port = self.scp.start()

    def stop(self) -> None:
        self.scp.stop()
        self.store.close()


@pytest.fixture
def report_port() -> int:
    return peers.free_port()


@pytest.fixture
def scp(tmp_path: Path, report_port: int) -> Iterator[Running]:
    running = Running(tmp_path, report_port)
    yield running
    running.stop()


def _request(files: list[Path]) -> tuple[str, Dataset]:
    transaction = generate_uid()
    info = Dataset()
    info.TransactionUID = transaction
    refs = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    info.ReferencedSOPSequence = refs
    return transaction, info


def _sent_169(scp: Running, ct_170: list[Path], tmp_path: Path) -> tuple[list[Path], Path]:
    """Send all but one (the 100th) with storescu; return (sent files, the unsent one)."""
    unsent = ct_170[99]
    sent = [f for f in ct_170 if f != unsent]
    folder = tmp_path / "to_send"
    folder.mkdir()
    for f in sent:
        (folder / f.name).symlink_to(f)
    done = peers.storescu(folder, HOST, scp.port, "RADLOOP", calling_ae=SCU_AE)
    assert done.returncode == 0, done.stderr
    with Session(scp.engine) as s:
        assert len(s.exec(select(Instance)).all()) == 169
    return sent, unsent


def _check_report(report: tuple[int, Dataset], transaction: str, sent: list[Path], unsent: Path) -> None:
    event_type, info = report
    assert event_type == 2  # failures exist
    assert info.TransactionUID == transaction
    succeeded = {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence}
    failed = [(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.FailedSOPSequence]
    assert len(succeeded) == 169
    assert succeeded == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sent}
    assert failed == [(str(pydicom.dcmread(unsent, stop_before_pixels=True).SOPInstanceUID), 0x0112)]


def _scu(title: str = SCU_AE) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian])
    return ae


def test_commitment_reported_on_the_same_association(
    scp: Running, ct_170: list[Path], tmp_path: Path
) -> None:
    sent, unsent = _sent_169(scp, ct_170, tmp_path)
    transaction, info = _request(ct_170)
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, Dataset | None]:
        reports.put((int(event.event_type), event.event_information))
        return 0x0000, None

    assoc = _scu().associate(
        HOST, scp.port, ae_title="RADLOOP", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(
            info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        assert status is not None and int(status.Status) == 0x0000
        report = reports.get(timeout=REPORT_TIMEOUT_S)
    finally:
        assoc.release()
    _check_report(report, transaction, sent, unsent)


def test_commitment_reported_on_a_new_association_after_release(
    scp: Running, ct_170: list[Path], tmp_path: Path, report_port: int
) -> None:
    """A requester configured for it gets its report on a new association to its address (it may
    release right after the N-ACTION-RSP)."""
    sent, unsent = _sent_169(scp, ct_170, tmp_path)
    transaction, info = _request(ct_170)
    reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, Dataset | None]:
        calling = str(event.assoc.requestor.ae_title).strip()
        reports.put((int(event.event_type), event.event_information, calling))
        return 0x0000, None

    listener = AE(ae_title=LATE_AE)
    listener.add_supported_context(
        StorageCommitmentPushModel, [ExplicitVRLittleEndian], scp_role=True, scu_role=False
    )
    server: Any = listener.start_server(
        (HOST, report_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        assoc = _scu(LATE_AE).associate(HOST, scp.port, ae_title="RADLOOP")
        assert assoc.is_established
        status, _reply = assoc.send_n_action(
            info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        assert status is not None and int(status.Status) == 0x0000
        assoc.release()
        event_type, event_info, calling = reports.get(timeout=REPORT_TIMEOUT_S)
    finally:
        server.shutdown()
    assert calling == "RADLOOP"
    _check_report((event_type, event_info), transaction, sent, unsent)


def test_commitment_request_without_references_is_refused(scp: Running) -> None:
    info = Dataset()
    info.TransactionUID = generate_uid()
    assoc = _scu().associate(HOST, scp.port, ae_title="RADLOOP")
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(
            info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        assert status is not None and int(status.Status) == 0x0115  # invalid argument value
    finally:
        assoc.release()
