"""The HTTP port of a real ``radloop serve`` under slow and greedy clients (issue 12).

Raw sockets play the hostile clients (a request head sent one byte a second, a body that stops
half-way); ``requests`` plays the well-behaved client that must keep being served meanwhile. The
server's own peak memory (``VmHWM`` from /proc) shows what one large STOW-RS part costs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import peers
from radloop.connector.dicomweb.multipart import new_boundary
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
MAX_CONCURRENCY = 12
MB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadloopServer]:
    workdir = tmp_path_factory.mktemp("limits")
    config = {
        "dicom": {"listeners": [{"ae_title": "RADLOOP"}]},
        "api": {
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "max_concurrency": MAX_CONCURRENCY,
        },
    }
    with RadloopServer(workdir, config) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: RadloopServer) -> str:
    return server.create_token("limits")


def _connect(server: RadloopServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.api_port), timeout=30)


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (reads and drops what it sends), None if it did not."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_a_request_head_sent_one_byte_a_second_is_cut_off(server: RadloopServer) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
    slow = [_connect(server) for _ in range(8)]
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    for i, byte in enumerate(head[:12]):
        for n, sock in enumerate(slow):
            if n in closed_at:
                continue
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_at[n] = time.monotonic() - started
        if i % 3 == 0:  # others are served meanwhile
            assert requests.get(server.api_url + "/health", timeout=5).status_code == 200
        time.sleep(1.0)
        if len(closed_at) == len(slow):
            break
    for n, sock in enumerate(slow):
        if n not in closed_at:
            after = _closed_within(sock, 5.0)
            assert after is not None, f"slow client {n} still connected"
            closed_at[n] = time.monotonic() - started
        sock.close()
    print(f"8 clients sending headers at 1 byte/s: closed after {max(closed_at.values()):.1f} s")
    assert max(closed_at.values()) < HEADER_TIMEOUT_S + 3
    assert requests.get(server.api_url + "/health", timeout=5).status_code == 200


def test_connections_over_the_limit_get_503_then_service_resumes(server: RadloopServer) -> None:
    held = [_connect(server) for _ in range(MAX_CONCURRENCY)]
    try:
        over = requests.get(server.api_url + "/health", timeout=5)
        assert over.status_code == 503
    finally:
        for sock in held:
            sock.close()
    peers.wait_for(
        lambda: requests.get(server.api_url + "/health", timeout=5).status_code == 200,
        10,
        interval=0.2,
        what="service after the flood",
    )


def test_a_silent_connection_is_closed(server: RadloopServer) -> None:
    sock = _connect(server)
    after = _closed_within(sock, HEADER_TIMEOUT_S + 5)
    sock.close()
    assert after is not None and after < HEADER_TIMEOUT_S + 2


def test_a_body_that_stops_half_way_gets_408(server: RadloopServer, token: str) -> None:
    sock = _connect(server)
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {token}\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        "Content-Length: 100000\r\n\r\n"
    )
    started = time.monotonic()
    sock.sendall(head.encode() + b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM")
    sock.settimeout(BODY_TIMEOUT_S + 10)
    answer = sock.recv(65536)
    elapsed = time.monotonic() - started
    while b"body_timeout_s" not in answer:  # the problem body may come in a later segment
        chunk = sock.recv(65536)
        if not chunk:  # the server closed the connection (it says so): the answer is complete
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout_s" in answer
    assert elapsed < BODY_TIMEOUT_S + 3


def test_a_400_keeps_the_connection_alive(server: RadloopServer, token: str) -> None:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        bad = session.get(server.api_url + "/dicomweb/studies", params={"offset": "9" * 5000}, timeout=10)
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.headers.get("connection", "").lower() != "close"
        bad = session.get(server.api_url + "/dicomweb/studies?offset=%C2%B2", timeout=10)
        assert bad.status_code == 400
        assert session.get(server.api_url + "/dicomweb/studies", timeout=10).status_code == 200


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _large_ct(path: Path, frames: int) -> int:
    """A 512×512 16-bit CT of ``frames`` frames written to ``path``; returns its size."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BIG", "CT"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((frames, 512, 512), dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def test_one_300_mb_stow_part_is_spooled_not_held(server: RadloopServer, token: str, tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    size = _large_ct(path, 600)  # 600 × 512 KB = 300 MB of Pixel Data
    boundary = new_boundary()

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as f:
            while chunk := f.read(MB):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    assert server.proc is not None
    requests.get(server.api_url + "/health", timeout=5)
    before = _vm_hwm(server.proc.pid)
    response = requests.post(
        server.api_url + "/dicomweb/studies",
        data=body(),
        timeout=300,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    grown = _vm_hwm(server.proc.pid) - before
    print(
        f"STOW of one {size / MB:.0f} MB part: HTTP {response.status_code}, "
        f"server peak RSS +{grown / MB:.0f} MB"
    )
    assert response.status_code == 200, response.text[:300]
    assert grown < 1.5 * size
    assert not list((server.settings.data_dir / "tmp").glob("stow-*")), "spooled part left behind"
