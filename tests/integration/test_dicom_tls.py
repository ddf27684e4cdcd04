"""DICOM TLS on every DICOM link, against real peers: DCMTK ``storescu``/``echoscu`` with ``+tls``,
Orthanc with ``DicomTlsEnabled``, certificates made by ``openssl`` (:mod:`pki`).

One ``radloop serve`` for the module, with three listeners on a plain port and a TLS port:

* ``RADLOOP_BRAIN`` (``tls: required``): the brain pipeline; reached over TLS only;
* ``RADLOOP`` (``tls: optional``): plain port and TLS port;
* ``RADLOOP_PINNED`` (``tls: required``): only calling AE ``MODALITY1`` whose certificate CN is
  ``MODALITY1``.

Results go to a TLS-only Orthanc (radloop presents its own client certificate), and a DIMSE
source on that Orthanc is pulled by C-MOVE over TLS both ways.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from sqlmodel import Session, select

import peers
from pki import Credential, Pki
from radloop.connector.dimse.scp import StorageSCP
from radloop.connector.dimse.scu import send_files
from radloop.connector.dimse.tls import tls_args
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.errors import DeliveryError
from radloop.core.models import Delivery, DeliveryState, Instance, Job, JobState, Series
from radloop.core.settings import DicomTlsClient, load_settings
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

BRAIN_AE, OPEN_AE, PINNED_AE = "RADLOOP_BRAIN", "RADLOOP", "RADLOOP_PINNED"
LOCAL = "127.0.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"))
    for name, cn in [
        ("radloop-server", "localhost"),
        ("radloop-client", "RADLOOP"),
        ("orthanc", "localhost"),
        ("modality", "MODALITY1"),
        ("workstation", "WORKSTATION"),
    ]:
        made.issue(name, cn)
    made.issue("intruder", "MODALITY1", by=made.rogue)  # the right name, an untrusted issuer
    return made


def _cred(pki: Pki, name: str) -> Credential:
    return Credential(pki.folder / f"{name}.crt", pki.folder / f"{name}.key")


def _tls(pki: Pki, name: str) -> list[str]:
    """DCMTK options: TLS with credential ``name``, the peer's certificate checked against the CA."""
    return _cred(pki, name).dcmtk_args(pki.ca.certificate)


@pytest.fixture(scope="module")
def tls_port() -> int:
    return peers.free_port()


@pytest.fixture(scope="module")
def orthanc_tls(
    pki: Pki, tls_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[peers.OrthancServer]:
    """An Orthanc whose DICOM port is TLS only; it sends C-MOVEs to radloop's TLS port over TLS."""
    orthanc = _cred(pki, "orthanc")
    config = peers.orthanc_dicom_tls(orthanc.certificate, orthanc.private_key, pki.ca.certificate)
    config["DicomModalities"] = {
        "radloop": {"AET": OPEN_AE, "Host": LOCAL, "Port": tls_port, "UseDicomTls": True},
    }
    server = peers.OrthancServer(tmp_path_factory.mktemp("orthanc-tls"), extra_config=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def radloop(
    pki: Pki, tls_port: int, orthanc_tls: peers.OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RadloopServer]:
    client = {**_cred(pki, "radloop-client").tls_files(), "ca_certificates": str(pki.ca.certificate)}
    config: dict[str, Any] = {
        "dicom": {
            "tls": {
                "port": tls_port,
                **_cred(pki, "radloop-server").tls_files(),
                "ca_certificates": str(pki.ca.certificate),
            },
            "listeners": [
                {
                    "ae_title": BRAIN_AE,
                    "pipelines": ["brain-extraction"],
                    "quiet_period_s": 60,
                    "tls": "required",
                },
                {
                    "ae_title": OPEN_AE,
                    "pipelines": ["brain-extraction"],
                    "quiet_period_s": 60,
                    "tls": "optional",
                },
                {
                    "ae_title": PINNED_AE,
                    "tls": "required",
                    "allowed_callers": [{"ae_title": "MODALITY1", "certificate_cn": "MODALITY1"}],
                },
            ],
        },
        "destinations": [orthanc_tls.destination("pacs-tls", tls=client)],
        "pipelines": {"destinations": {"brain-extraction": ["pacs-tls"]}},
        "sources": [
            {
                "name": "pacs-tls",
                "kind": "dimse",
                "host": LOCAL,
                "port": orthanc_tls.dicom_port,
                "ae_title": orthanc_tls.aet,
                "listener_ae_title": OPEN_AE,
                "timeout_s": 60,
                "tls": client,
            }
        ],
    }
    server = RadloopServer(tmp_path_factory.mktemp("radloop-tls"), config)
    server.start(timeout=300)  # worker start with the deepbet models: minutes on a loaded machine
    try:
        yield server
    finally:
        server.stop()


def _rows(server: RadloopServer, model: Any) -> list[Any]:
    with Session(server.engine) as s:
        return list(s.exec(select(model)).all())


def _log_after(server: RadloopServer, offset: int) -> str:
    return server.log_text()[offset:]


def _wait_log(server: RadloopServer, offset: int, text: str) -> str:
    return peers.wait_for(
        lambda: text in _log_after(server, offset) and _log_after(server, offset),
        20,
        what=f"{text!r} in {server.log_path}",
    )


# --------------------------------------------------------------------------- refusals


def test_echo_over_tls_with_a_trusted_certificate(pki: Pki, radloop: RadloopServer, tls_port: int) -> None:
    assert "DICOM TLS listening on 127.0.0.1" in radloop.log_text()
    for called in (BRAIN_AE, OPEN_AE):
        done = peers.echoscu(LOCAL, tls_port, called, "MODALITY1", extra_args=_tls(pki, "modality"))
        assert done.returncode == 0, done.stderr
    plain = peers.echoscu(LOCAL, radloop.port, OPEN_AE, "MODALITY1")  # optional: plain port too
    assert plain.returncode == 0, plain.stderr


def test_radloop_send_over_tls(
    pki: Pki, radloop: RadloopServer, tls_port: int, ct_j2k_series_dir: Path
) -> None:
    modality = _cred(pki, "modality")
    args = ["--host", LOCAL, "--port", str(tls_port), "--called-ae", OPEN_AE, "--calling-ae", "MODALITY1"]
    args += ["--tls-ca", str(pki.ca.certificate), "--tls-cert", str(modality.certificate)]
    done = radloop.cli(
        "send", *args, "--tls-key", str(modality.private_key), str(ct_j2k_series_dir), with_config=False
    )
    assert done.returncode == 0 and "20 sent, 0 failed" in done.stdout, done.stdout + done.stderr
    half = radloop.cli(
        "send", *args, str(ct_j2k_series_dir), with_config=False
    )  # a certificate without its key
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr, half.stderr


def test_a_client_without_a_trusted_certificate_is_refused(
    pki: Pki, radloop: RadloopServer, tls_port: int, synthetic_ct_dir: Path
) -> None:
    before = len(_rows(radloop, Instance))
    offset = len(radloop.log_text())
    untrusted = peers.storescu(
        synthetic_ct_dir, LOCAL, tls_port, BRAIN_AE, "MODALITY1", _tls(pki, "intruder")
    )
    assert untrusted.returncode != 0, untrusted.stdout
    _wait_log(radloop, offset, "certificate not accepted")
    anonymous = peers.echoscu(
        LOCAL, tls_port, OPEN_AE, "MODALITY1", extra_args=["+tla", "+cf", str(pki.ca.certificate)]
    )
    assert anonymous.returncode != 0, anonymous.stdout
    failed = "DICOM TLS handshake with 127.0.0.1 failed, connection closed"
    peers.wait_for(lambda: _log_after(radloop, offset).count(failed) >= 2, 20, what="two refused handshakes")
    assert len(_rows(radloop, Instance)) == before  # nothing stored


def test_a_plain_connection_to_a_required_listener_is_refused(
    radloop: RadloopServer, tls_port: int, synthetic_ct_dir: Path
) -> None:
    before = len(_rows(radloop, Instance))
    offset = len(radloop.log_text())
    plain = peers.storescu(synthetic_ct_dir, LOCAL, radloop.port, BRAIN_AE, "MODALITY1")
    assert plain.returncode != 0 and "Called AE Title Not Recognized" in plain.stderr, plain.stderr
    _wait_log(radloop, offset, f"AE '{BRAIN_AE}' requires DICOM TLS; the caller came over plain TCP")
    on_tls_port = peers.echoscu(LOCAL, tls_port, BRAIN_AE, "MODALITY1")  # plain DICOM at the TLS port
    assert on_tls_port.returncode != 0, on_tls_port.stdout
    _wait_log(radloop, offset, "WRONG_VERSION_NUMBER")  # an A-ASSOCIATE-RQ is no TLS ClientHello
    assert len(_rows(radloop, Instance)) == before


def test_the_certificate_cn_is_bound_to_the_calling_ae(
    pki: Pki, radloop: RadloopServer, tls_port: int
) -> None:
    offset = len(radloop.log_text())
    ok = peers.echoscu(LOCAL, tls_port, PINNED_AE, "MODALITY1", extra_args=_tls(pki, "modality"))
    assert ok.returncode == 0, ok.stderr
    other_ae = peers.echoscu(LOCAL, tls_port, PINNED_AE, "MODALITY2", extra_args=_tls(pki, "modality"))
    assert other_ae.returncode != 0 and "Calling AE Title Not Recognized" in other_ae.stderr
    other_cert = peers.echoscu(LOCAL, tls_port, PINNED_AE, "MODALITY1", extra_args=_tls(pki, "workstation"))
    assert other_cert.returncode != 0 and "Calling AE Title Not Recognized" in other_cert.stderr
    _wait_log(radloop, offset, "(certificate CN WORKSTATION) is not allowed on AE 'RADLOOP_PINNED'")


def test_tls_older_than_1_2_is_refused(radloop: RadloopServer, tls_port: int) -> None:
    offset = len(radloop.log_text())
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated: the point
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with socket.create_connection((LOCAL, tls_port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="localhost")
    _wait_log(radloop, offset, "UNSUPPORTED_PROTOCOL")


def test_a_silent_connection_does_not_stall_the_tls_port(
    pki: Pki, radloop: RadloopServer, tls_port: int
) -> None:
    """The handshake runs in the connection's thread under the A-ASSOCIATE-RQ deadline, not in
    the accept loop: callers get through while a peer that never says hello holds a connection."""
    offset = len(radloop.log_text())
    with socket.create_connection((LOCAL, tls_port), timeout=30) as silent:
        done = peers.echoscu(LOCAL, tls_port, OPEN_AE, "MODALITY1", extra_args=_tls(pki, "modality"))
        assert done.returncode == 0, done.stderr
        silent.settimeout(30)  # closed by radloop after association_request_timeout_s (10 s)
        assert silent.recv(1) == b""
    _wait_log(radloop, offset, "no complete handshake within association_request_timeout_s")


def test_a_dripping_handshake_is_closed_at_the_deadline(radloop: RadloopServer, tls_port: int) -> None:
    """A ClientHello dripped a byte a second gets the same 10 s (association_request_timeout_s) in
    total as a silent peer, not 10 s per byte."""
    hello = b"\x16\x03\x01\x02\x00" + bytes(60)  # a handshake record declaring 512 bytes, then a few
    started = time.monotonic()
    closed_after: float | None = None
    with socket.create_connection((LOCAL, tls_port), timeout=30) as drip:
        for byte in hello:  # bounded: 65 bytes, at most about 65 s
            try:
                drip.sendall(bytes([byte]))
                if selectors_wait(drip) and drip.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except OSError:  # reset by radloop
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "radloop kept a dripping handshake open for 65 s"
    assert closed_after < 40, closed_after  # 10 s deadline, generous for a loaded machine


# --------------------------------------------------------------------------- the whole loop


@pytest.mark.slow
def test_t1_over_tls_to_seg_delivered_to_orthanc_over_tls(
    pki: Pki,
    radloop: RadloopServer,
    tls_port: int,
    orthanc_tls: peers.OrthancServer,
    t1_series_dir: Path,
) -> None:
    # Orthanc's DICOM port is TLS only: a plain C-STORE does not get through
    first = sorted(t1_series_dir.iterdir())[:1]
    with pytest.raises(DeliveryError, match="no association"):
        send_files(first, LOCAL, orthanc_tls.dicom_port, orthanc_tls.aet, "RADLOOP", timeout_s=10)

    sent = peers.storescu(t1_series_dir, LOCAL, tls_port, BRAIN_AE, "MODALITY1", _tls(pki, "modality"))
    assert sent.returncode == 0, sent.stderr
    (series,) = [s for s in _rows(radloop, Series) if s.called_ae == BRAIN_AE]
    assert series.instance_count == 170 and series.calling_ae == "MODALITY1"
    segs = peers.wait_for(
        lambda: [i for i in orthanc_tls.instances() if orthanc_tls.instance_tags(i).get("Modality") == "SEG"],
        300,
        interval=0.5,
        what=f"SEG in the TLS Orthanc (radloop log {radloop.log_path}; Orthanc log {orthanc_tls.log_path})",
    )
    assert len(segs) == 1
    jobs = [j for j in _rows(radloop, Job) if j.pipeline == "brain-extraction"]
    assert [j.state for j in jobs] == [JobState.succeeded]
    deliveries = [d for d in _rows(radloop, Delivery) if d.destination == "pacs-tls"]
    assert deliveries and all(d.state == DeliveryState.sent for d in deliveries)
    source = pydicom.dcmread(first[0], stop_before_pixels=True)
    assert orthanc_tls.instance_tags(segs[0])["StudyInstanceUID"] == source.StudyInstanceUID


def test_dimse_pull_over_tls_both_ways(
    pki: Pki, radloop: RadloopServer, orthanc_tls: peers.OrthancServer, synthetic_ct_dir: Path
) -> None:
    """C-FIND and the C-MOVE request go to Orthanc over TLS; Orthanc's C-STOREs come back to
    radloop's TLS port over TLS (``UseDicomTls``), with Orthanc's own certificate."""
    stored = peers.storescu(
        synthetic_ct_dir, LOCAL, orthanc_tls.dicom_port, orthanc_tls.aet, "MODALITY1", _tls(pki, "modality")
    )
    assert stored.returncode == 0, stored.stderr
    header = pydicom.dcmread(sorted(synthetic_ct_dir.iterdir())[0], stop_before_pixels=True)
    study, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    done = radloop.cli("pull", "--source", "pacs-tls", "--study", study, "--json")
    assert done.returncode == 0, done.stdout + done.stderr + radloop.log_text()[-3000:]
    (row,) = json.loads(done.stdout)
    assert row["state"] == "done" and row["instances"] == 16
    (series,) = [s for s in _rows(radloop, Series) if s.series_instance_uid == series_uid]
    assert (
        series.instance_count == 16 and series.called_ae == OPEN_AE and series.calling_ae == orthanc_tls.aet
    )


def test_all_listeners_required_opens_no_plain_port_and_radloops_own_scu_verifies_the_host(
    pki: Pki, tmp_path: Path, synthetic_ct_dir: Path
) -> None:
    """In process: an SCP whose listeners all require TLS listens on the TLS port only; radloop's
    C-STORE SCU (destinations, ``radloop send``) gets through with its client certificate, and
    refuses a server whose certificate does not name the host it was told to reach."""
    plain_port = peers.free_port()
    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        dicom={
            "host": LOCAL,
            "port": plain_port,
            "min_free_bytes": 0,
            "tls": {
                "port": 0,
                **_cred(pki, "radloop-server").tls_files(),
                "ca_certificates": str(pki.ca.certificate),
            },
            "listeners": [{"ae_title": BRAIN_AE, "tls": "required"}],
        },
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    scp = StorageSCP(settings, InstanceStore(settings.data_dir, engine), lambda _ids, _called: None)
    port = scp.start()
    try:
        assert port == scp.tls_port and port != plain_port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOCAL, plain_port), timeout=5).close()
        files = sorted(synthetic_ct_dir.iterdir())
        client = DicomTlsClient(ca_certificates=pki.ca.certificate, **_cred(pki, "modality").tls_files())
        report = send_files(files, LOCAL, port, BRAIN_AE, "MODALITY1", tls_args=tls_args(client, LOCAL, "t"))
        assert len(report.sent) == len(files) and not report.failed
        with Session(engine) as s:
            assert len(s.exec(select(Instance)).all()) == len(files)
        wrong_name = client.model_copy(update={"server_name": "pacs.elsewhere.example"})
        with pytest.raises(DeliveryError, match="DICOM TLS"):
            send_files(
                files[:1], LOCAL, port, BRAIN_AE, "MODALITY1", tls_args=tls_args(wrong_name, LOCAL, "t")
            )
        anonymous = DicomTlsClient(ca_certificates=pki.ca.certificate)  # no client certificate
        with pytest.raises(DeliveryError, match="DICOM TLS"):
            send_files(
                files[:1], LOCAL, port, BRAIN_AE, "MODALITY1", tls_args=tls_args(anonymous, LOCAL, "t")
            )
    finally:
        scp.stop()
        engine.dispose()


def test_a_missing_certificate_stops_serve_at_start_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "radloop.yaml"
    tls = {
        "port": peers.free_port(),
        "certificate": str(tmp_path / "missing.crt"),
        "private_key": str(_cred(pki, "radloop-server").private_key),
        "ca_certificates": str(pki.ca.certificate),
    }
    dicom = {"port": peers.free_port(), "tls": tls, "listeners": [{"ae_title": OPEN_AE, "tls": "optional"}]}
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "dicom": dicom}))
    done = subprocess.run(
        [sys.executable, "-m", "radloop.cli", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"error: dicom.tls.certificate: cannot read {tmp_path / 'missing.crt'}" in done.stderr


def selectors_wait(sock: socket.socket, seconds: float = 1.0) -> bool:
    """Whether ``sock`` has something to read (data or its close) within ``seconds``."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(seconds))
