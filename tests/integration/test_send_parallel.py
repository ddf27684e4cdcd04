"""``radloop send`` / the C-STORE SCU (issue 13): several parallel associations, to DCMTK
``storescp`` and to a radloop SCP that refuses all but one."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
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
