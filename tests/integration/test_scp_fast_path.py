"""C-STOREs served in the connection's reader thread (connector/dimse/store_fast), against a real
in-process SCP: a scripted peer (raw socket, PDUs written by the test) for fragmentations and
protocol breaches no library SCU sends, pynetdicom's SCU for the ordinary interleavings."""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlmodel import Session, select

import hostile_instances as hostile
from radloop.connector.dimse.scp import StorageSCP
from radloop.core.models import Instance
from radloop.core.settings import load_settings
from radloop.runtime import Runtime

HOST = "127.0.0.1"
MAX_INSTANCE_BYTES = 1 << 20
CT_CONTEXT, ECHO_CONTEXT = 1, 3
_P_DATA_TF, _A_RELEASE_RQ, _A_RELEASE_RP, _A_ABORT = 0x04, 0x05, 0x06, 0x07
COMMAND, COMMAND_LAST, DATA, DATA_LAST = 0x01, 0x03, 0x00, 0x02  # message control headers


class Running:
    def __init__(self, data_dir: Path) -> None:
        settings = load_settings(
            data_dir=str(data_dir),
            dicom={
                "host": HOST,
                "port": 0,
                "min_free_bytes": 0,
                "network_timeout_s": 5.0,
                "max_instance_bytes": MAX_INSTANCE_BYTES,
            },
        )
        runtime = Runtime.build(settings, migrate=True)  # the store with the configured limits
        self.engine, self.store = runtime.engine, runtime.store
        self.scp = StorageSCP(settings, self.store, lambda _ids, _called: None)
        self.port = self.scp.start()

    def indexed(self) -> list[str]:
        with Session(self.engine) as s:
            return [i.sop_instance_uid for i in s.exec(select(Instance)).all()]

    def stored_bytes(self, sop_instance_uid: str) -> bytes:
        return next(self.store.root.rglob(f"{sop_instance_uid}.dcm")).read_bytes()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path / "data")
    yield running
    running.scp.stop()


class ScriptedPeer:
    """An SCU that writes each PDU itself: CT Image Storage on context 1, Verification on 3."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.sendall(_associate_rq())
        pdu_type, _ = self.read_pdu()
        assert pdu_type == 0x02, f"A-ASSOCIATE-AC expected, got PDU type 0x{pdu_type:02X}"

    def pdata(self, *pdvs: tuple[int, int, bytes]) -> None:
        """One P-DATA-TF PDU: (presentation context ID, message control header, bytes) each."""
        items = b"".join(struct.pack(">LBB", len(data) + 2, cx, control) + data for cx, control, data in pdvs)
        self.sock.sendall(struct.pack(">BxL", _P_DATA_TF, len(items)) + items)

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._read(6)
        pdu_type, length = header[0], struct.unpack(">L", header[2:6])[0]
        return pdu_type, self._read(length)

    def response_status(self) -> int:
        """The Status of the next DIMSE response (its command in one PDV, as radloop sends it)."""
        pdu_type, body = self.read_pdu()
        assert pdu_type == _P_DATA_TF, f"a response expected, got PDU type 0x{pdu_type:02X}"
        assert body[5] == COMMAND_LAST
        return int(decode(io.BytesIO(body[6:]), True, True).Status)

    def release(self) -> int:
        self.sock.sendall(struct.pack(">BxL4x", _A_RELEASE_RQ, 4))
        return self.read_pdu()[0]

    def close(self) -> None:
        self.sock.close()

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data


def _associate_rq() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "SCRIPTED", "RADLOOP"
    contexts = []
    for context_id, abstract in ((CT_CONTEXT, CTImageStorage), (ECHO_CONTEXT, Verification)):
        cx = build_context(abstract, [ExplicitVRLittleEndian])
        cx.context_id = context_id
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 0
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _store_command(message_id: int, sop_instance_uid: str) -> bytes:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\0")  # a data set follows: Command Data Set Type 0001H
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return bytes(encode(message.command_set, True, True))  # type: ignore[arg-type]


def _instance(rows: int = 128) -> tuple[str, bytes]:
    ds = hostile.ct_dataset(rows, rows)
    return str(ds.SOPInstanceUID), hostile.encode_dataset(ds)


def test_data_set_fragments_in_any_pdu_layout_are_stored_as_sent(scp: Running) -> None:
    uid, data = _instance()
    peer = ScriptedPeer(scp.port)
    try:
        # the command and the first data set fragment in one PDU, then two fragments in one PDU,
        # then an empty fragment, then the last
        cut = [0, 100, 5000, 9000, 9000, len(data)]
        peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(7, uid)), (CT_CONTEXT, DATA, data[:100]))
        peer.pdata((CT_CONTEXT, DATA, data[cut[1] : cut[2]]), (CT_CONTEXT, DATA, data[cut[2] : cut[3]]))
        peer.pdata((CT_CONTEXT, DATA, b""))
        peer.pdata((CT_CONTEXT, DATA_LAST, data[cut[4] :]))
        assert peer.response_status() == 0x0000
        assert peer.release() == _A_RELEASE_RP
    finally:
        peer.close()
    assert scp.indexed() == [uid]
    assert scp.stored_bytes(uid).endswith(data)


def test_a_store_served_before_pynetdicom_marks_the_association_established_is_answered(
    scp: Running,
) -> None:
    """pynetdicom sets ``is_established`` after the A-ASSOCIATE-AC went out and the EVT_ACCEPTED
    handlers ran; under load a peer's first C-STORE was stored in that window and never answered
    (found by CI). An EVT_ACCEPTED handler holds that window open until the answer came."""
    assert scp.scp._server is not None
    window = threading.Event()
    scp.scp._server.bind(evt.EVT_ACCEPTED, lambda _event: window.wait(30))  # a slow notification
    uid, data = _instance()
    peer = ScriptedPeer(scp.port)
    try:
        peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(1, uid)), (CT_CONTEXT, DATA_LAST, data))
        assert peer.response_status() == 0x0000  # before the window closes (the socket's 10 s bound)
    finally:
        window.set()
        peer.close()
    assert scp.indexed() == [uid]


def test_a_command_over_two_pdus_is_left_to_pynetdicom_and_stored(scp: Running) -> None:
    uid, data = _instance()
    command = _store_command(1, uid)
    peer = ScriptedPeer(scp.port)
    try:
        peer.pdata((CT_CONTEXT, COMMAND, command[:40]))
        peer.pdata((CT_CONTEXT, COMMAND_LAST, command[40:]))
        peer.pdata((CT_CONTEXT, DATA_LAST, data))
        assert peer.response_status() == 0x0000
        uid_2, data_2 = _instance()  # the next, plain one takes the fast path again
        peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(2, uid_2)))
        peer.pdata((CT_CONTEXT, DATA_LAST, data_2))
        assert peer.response_status() == 0x0000
        assert peer.release() == _A_RELEASE_RP
    finally:
        peer.close()
    assert sorted(scp.indexed()) == sorted([uid, uid_2])
    assert scp.stored_bytes(uid).endswith(data)


def test_echo_and_store_interleave_on_one_association(scp: Running, tmp_path: Path) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, scp.port, ae_title="RADLOOP")
    assert assoc.is_established
    uids = []
    try:
        for index in range(3):
            assert int(assoc.send_c_echo().Status) == 0x0000
            ds = hostile.ct_dataset()
            path = hostile.write(tmp_path / f"{index}.dcm", hostile.part10(ds))
            assert int(assoc.send_c_store(path).Status) == 0x0000
            uids.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    assert sorted(scp.indexed()) == sorted(uids)


@pytest.mark.parametrize("breach", ["other-context", "command-inside", "after-last", "item-length"])
def test_a_broken_fragment_sequence_is_aborted_and_nothing_stored(
    scp: Running, breach: str, caplog: pytest.LogCaptureFixture
) -> None:
    uid, data = _instance()
    peer = ScriptedPeer(scp.port)
    try:
        with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.store_fast"):
            peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(1, uid)))
            peer.pdata((CT_CONTEXT, DATA, data[:1000]))
            if breach == "other-context":
                peer.pdata((ECHO_CONTEXT, DATA_LAST, data[1000:]))
            elif breach == "command-inside":
                peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(2, uid)))
            elif breach == "after-last":
                peer.pdata((CT_CONTEXT, DATA_LAST, data[1000:]), (CT_CONTEXT, DATA, b"more"))
            else:  # a PDV item that claims more bytes than its PDU holds
                item = struct.pack(">LBB", 5000, CT_CONTEXT, DATA_LAST) + data[1000:2000]
                peer.sock.sendall(struct.pack(">BxL", _P_DATA_TF, len(item)) + item)
            assert peer.read_pdu()[0] == _A_ABORT
    finally:
        peer.close()
    assert "aborting the association" in caplog.text
    assert scp.indexed() == []
    uid_2, data_2 = _instance()  # and the SCP goes on serving others
    peer = ScriptedPeer(scp.port)
    try:
        peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(1, uid_2)), (CT_CONTEXT, DATA_LAST, data_2))
        assert peer.response_status() == 0x0000
    finally:
        peer.close()


def test_an_over_large_data_set_is_dropped_while_it_arrives_and_refused(
    scp: Running, caplog: pytest.LogCaptureFixture
) -> None:
    uid, data = _instance(rows=1024)  # 2 MiB of pixels, over the 1 MiB max_instance_bytes
    assert len(data) > MAX_INSTANCE_BYTES
    peer = ScriptedPeer(scp.port)
    try:
        with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.scp"):
            peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(1, uid)))
            step = 256 << 10
            for start in range(0, len(data), step):
                last = start + step >= len(data)
                peer.pdata((CT_CONTEXT, DATA_LAST if last else DATA, data[start : start + step]))
            assert peer.response_status() == 0xA700
        assert f"over max_instance_bytes ({MAX_INSTANCE_BYTES})" in caplog.text
        uid_2, data_2 = _instance()  # the association goes on
        peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(2, uid_2)), (CT_CONTEXT, DATA_LAST, data_2))
        assert peer.response_status() == 0x0000
        assert peer.release() == _A_RELEASE_RP
    finally:
        peer.close()
    assert scp.indexed() == [uid_2]


def test_a_release_inside_a_data_set_drops_the_partial_instance(
    scp: Running, caplog: pytest.LogCaptureFixture
) -> None:
    uid, data = _instance()
    peer = ScriptedPeer(scp.port)
    try:
        with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.store_fast"):
            peer.pdata((CT_CONTEXT, COMMAND_LAST, _store_command(1, uid)), (CT_CONTEXT, DATA, data[:1000]))
            assert peer.release() == _A_RELEASE_RP
        assert "not stored" in caplog.text
    finally:
        peer.close()
    assert scp.indexed() == []
