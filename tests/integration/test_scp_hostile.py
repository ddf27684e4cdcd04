"""The SCP under floods and hostile input (issue 12): a real StorageSCP on 127.0.0.1, real TCP.

Each test talks to the listening socket the way the hostile run did: raw bytes for lockouts and
malformed PDUs, pynetdicom and DCMTK ``echoscu`` as well-behaved peers, and C-STORE of the
hostile objects in ``tests/hostile_instances.py``.
"""

from __future__ import annotations

import logging
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlmodel import Session, select

import hostile_instances as hostile
import peers
from radloop.connector.dimse.scp import StorageSCP
from radloop.core.models import Instance
from radloop.core.settings import Settings, load_settings
from radloop.runtime import Runtime

HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 2.0
MAX_ASSOCIATIONS = 4


class Running:
    """A started SCP, its port and what it has indexed."""

    def __init__(self, settings: Settings) -> None:
        runtime = Runtime.build(settings, migrate=True)  # the store as `radloop serve` builds it
        self.engine, self.store = runtime.engine, runtime.store
        self.ended: list[set[int]] = []
        self.scp = StorageSCP(settings, self.store, lambda ids, _called: self.ended.append(ids))
        self.port = self.scp.start()

    def indexed(self) -> list[str]:
        with Session(self.engine) as s:
            return [i.sop_instance_uid for i in s.exec(select(Instance)).all()]


@pytest.fixture
def scp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    # the test's SCU sends files as they are, undecoded: the hostile bytes reach the wire
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        dicom={
            "host": HOST,
            "port": 0,
            "min_free_bytes": 0,
            "max_associations": MAX_ASSOCIATIONS,
            "association_request_timeout_s": REQUEST_TIMEOUT_S,
            "network_timeout_s": 5.0,
            "max_pdu": 65536,
            "max_instance_bytes": 64 << 20,
        },
    )
    running = Running(settings)
    yield running
    running.scp.stop()


def _echo_dcmtk(port: int) -> tuple[bool, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/echoscu", "-to", "10", "-ta", "10", "-aec", "RADLOOP", HOST, str(port)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0, time.monotonic() - started


def _associate(port: int, *contexts: tuple[str, list[str]]) -> Association:
    ae = AE(ae_title="HOSTILE_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, syntaxes in contexts or ((Verification, [ExplicitVRLittleEndian]),):
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate(HOST, port, ae_title="RADLOOP")


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing ``sock``, or None if still open after ``seconds``."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def _associate_rq(even_context_id: bool = False) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "HOSTILE", "RADLOOP"
    cx = build_context(Verification)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    encoded = bytearray(pdu.encode())
    if even_context_id:
        item = encoded.index(b"\x20\x00", 74)  # the presentation context item, after the fixed fields
        encoded[item + 4] = 2
    return bytes(encoded)


# -- association lockout ----------------------------------------------------------------------
def test_idle_and_dripping_connections_hold_no_association_slot(scp: Running) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(60):
            sock = socket.create_connection((HOST, scp.port), timeout=5)
            if i < 16:
                sock.sendall(b"\x01\x00\x00")  # the first 3 bytes of an A-ASSOCIATE-RQ, then silence
            idle.append(sock)
        ok, took = _echo_dcmtk(scp.port)
        print(f"C-ECHO with 60 idle connections open: {'served' if ok else 'FAILED'} in {took:.2f} s")
        assert ok and took < 10

        # the silent and the half-sent ones are all closed by the ARTIM-style bound
        started = time.monotonic()
        for sock in idle:
            assert _closed_within(sock, REQUEST_TIMEOUT_S + 3) is not None
        print(f"60 idle connections closed {time.monotonic() - started:.2f} s after the echo")
    finally:
        for sock in idle:
            sock.close()

    drip = socket.create_connection((HOST, scp.port), timeout=5)
    try:
        started = time.monotonic()
        closed = False
        for byte in _associate_rq()[:20]:  # one byte every 0.5 s: never a complete request
            try:
                drip.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_within(drip, 0.5) is not None:
                closed = True
                break
        took = time.monotonic() - started
        print(f"dripping connection closed after {took:.2f} s (bound {REQUEST_TIMEOUT_S} s)")
        assert closed and took < REQUEST_TIMEOUT_S + 2
    finally:
        drip.close()


def test_associations_over_the_limit_are_rejected_and_service_goes_on(scp: Running) -> None:
    held = [_associate(scp.port) for _ in range(MAX_ASSOCIATIONS)]
    try:
        assert all(a.is_established for a in held)
        extra = _associate(scp.port)
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit
    finally:
        for a in held:
            a.release()
    assert peers.wait_for(lambda: _echo_dcmtk(scp.port)[0], 10, interval=0.5, what="echo after release")


# -- malformed PDUs ---------------------------------------------------------------------------
def test_even_presentation_context_id_is_aborted_and_frees_the_connection(scp: Running) -> None:
    with socket.create_connection((HOST, scp.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(_associate_rq(even_context_id=True))
        received = _closed_within(sock, 2.0)
        took = time.monotonic() - started
    print(f"even presentation context ID: answered {received!r} and closed in {took:.2f} s")
    assert received is not None and received[:1] == b"\x07"  # A-ABORT, then the connection closes
    assert peers.wait_for(lambda: _echo_dcmtk(scp.port)[0], 10, interval=0.5, what="echo afterwards")


@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_huge_declared_pdu_length_is_aborted_before_buffering(scp: Running, pdu_type: int) -> None:
    with socket.create_connection((HOST, scp.port), timeout=5) as sock:
        if pdu_type == 0x04:  # a P-DATA-TF after a proper association
            sock.sendall(_associate_rq())
            header = sock.recv(6)
            assert header[:1] == b"\x02", "association should be accepted"
            sock.recv(struct.unpack(">L", header[2:6])[0], socket.MSG_WAITALL)
        started = time.monotonic()
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFF0) + bytes(64 << 10))
        received = _closed_within(sock, 3.0)
        took = time.monotonic() - started
    print(f"PDU type {pdu_type:#04x} declaring 0xFFFFFFF0 bytes: answered {received!r} in {took:.2f} s")
    assert received is not None and received[:1] == b"\x07"


# -- hostile instances over C-STORE ------------------------------------------------------------
HOSTILE: list[tuple[str, Any, int, str]] = [
    ("million frames", hostile.million_frames, 0xA900, "rule PixelData-length"),
    ("pixel data 5000 bytes short", hostile.short_pixel_data, 0xA900, "rule PixelData-length"),
    ("no Rows", hostile.no_rows, 0xA900, "rule Rows/Columns"),
    ("garbage after undefined-length SQ", hostile.garbage_after_undefined_sq, 0xC000, "rule vr"),
    (
        "garbage after undefined-length OW",
        hostile.garbage_after_undefined_ow,
        0xC000,
        "rule undefined-length",
    ),
]


def _send(port: int, path: Path, *syntaxes: str) -> int:
    assoc = _associate(port, (CTImageStorage, list(syntaxes or (ExplicitVRLittleEndian,))))
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def test_hostile_instances_are_refused_with_status_and_rule(
    scp: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = hostile.write(tmp_path / "good.dcm", hostile.part10(hostile.ct_dataset()))
    with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.scp"):
        for name, make, expected, rule in HOSTILE:
            path = hostile.write(tmp_path / "hostile.dcm", make())
            code = _send(scp.port, path)
            print(f"{name}: status 0x{code:04X}")
            assert code == expected, name
            assert rule in caplog.text, name
    assert scp.indexed() == []
    assert not any(p.suffix == ".dcm" for p in (scp.store.root).rglob("*"))
    assert _send(scp.port, good) == 0x0000
    assert len(scp.indexed()) == 1


def test_deflate_bomb_is_refused_and_memory_stays_flat(
    scp: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bomb = hostile.write(tmp_path / "bomb.dcm", hostile.deflate_bomb(1000 * 1000 * 1000))
    print(f"deflate bomb: {bomb.stat().st_size} bytes on the wire, 1000 MB inflated")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.scp"):
        code = _send(scp.port, bomb, DeflatedExplicitVRLittleEndian)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"deflate bomb: status 0x{code:04X}, peak RSS grew {grown_mib:.0f} MiB")
    assert code == 0xA700
    assert "rule max_instance_bytes" in caplog.text
    assert grown_mib < 100
    assert scp.indexed() == []


def test_same_instance_in_another_study_is_refused(
    scp: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = hostile.ct_dataset()
    second = hostile.ct_dataset()
    second.SOPInstanceUID, second.PatientID = first.SOPInstanceUID, "OTHER"
    a = hostile.write(tmp_path / "a.dcm", hostile.part10(first))
    b = hostile.write(tmp_path / "b.dcm", hostile.part10(second))
    assert _send(scp.port, a) == 0x0000
    with caplog.at_level(logging.WARNING, logger="radloop.connector.dimse.scp"):
        assert _send(scp.port, b) == 0xA900
    assert first.StudyInstanceUID in caplog.text and second.StudyInstanceUID in caplog.text
    assert scp.indexed() == [first.SOPInstanceUID]
    assert _send(scp.port, a) == 0x0000  # resending the original stays idempotent


def test_real_data_is_still_accepted(scp: Running, t1_series_dir: Path, ct_j2k_series_dir: Path) -> None:
    from pydicom import dcmread

    sent = sorted(t1_series_dir.glob("*.dcm"))[:5] + sorted(ct_j2k_series_dir.rglob("*.dcm"))[:3]
    for path in sent:
        ds = dcmread(path, stop_before_pixels=True)
        assoc = _associate(scp.port, (str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)]))
        try:
            assert int(assoc.send_c_store(path).Status) == 0x0000, path.name
        finally:
            assoc.release()
    assert len(scp.indexed()) == len(sent)
    assert peers.wait_for(lambda: len(scp.ended) >= len(sent), 5, what="association-end notifications")


def test_peer_values_cannot_forge_log_lines(scp: Running, caplog: pytest.LogCaptureFixture) -> None:
    request = bytearray(_associate_rq())
    request[10:26] = b"EVIL\nFORGED LINE"[:16]  # Called AE Title: 16 bytes at offset 10
    with caplog.at_level(logging.WARNING, logger="radloop"):
        with socket.create_connection((HOST, scp.port), timeout=5) as sock:
            sock.sendall(bytes(request))
            reply = _closed_within(sock, 3.0)
        assert reply is not None and reply[:1] in (b"\x03", b"\x07")  # A-ASSOCIATE-RJ or A-ABORT
        peers.wait_for(lambda: "FORGED" in caplog.text, 5, what="a log line naming the called AE")
    lines = [r.getMessage() for r in caplog.records if "FORGED" in r.getMessage()]
    print("logged:", lines)
    assert all("EVIL\\nFORGED" in line and "\n" not in line for line in lines)


def test_idle_and_overlong_associations_are_aborted(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        dicom={
            "host": HOST,
            "port": 0,
            "min_free_bytes": 0,
            "network_timeout_s": 1.5,
            "max_association_s": 4.0,
        },
    )
    running = Running(settings)
    try:
        started = time.monotonic()
        idle = _associate(running.port)
        assert idle.is_established
        peers.wait_for(lambda: not idle.is_established, 6, what="idle association aborted")
        print(f"idle association aborted after {time.monotonic() - started:.2f} s (network_timeout_s 1.5)")
        assert idle.is_aborted

        started = time.monotonic()
        busy = _associate(running.port)
        echoes = 0
        for _ in range(40):  # an echo every 0.25 s keeps it from idling; the total bound still ends it
            if not busy.is_established:
                break
            try:
                busy.send_c_echo()
                echoes += 1
            except RuntimeError:
                break
            time.sleep(0.25)
        took = time.monotonic() - started
        print(f"busy association ({echoes} echoes) ended after {took:.2f} s (max_association_s 4)")
        assert not busy.is_established and 3.5 < took < 6.5
    finally:
        running.scp.stop()
