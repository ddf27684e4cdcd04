"""Senders against real peers: STOW-RS to Orthanc's DICOMweb (basic auth, idempotent re-send),
C-STORE transfer-syntax negotiation, and a scripted STOW-RS peer for what Orthanc won't do
(bearer tokens, a response that refuses instances)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest

import peers
from radloop.connector.outbound.destinations import DicomSender, DicomwebSender, sender_for
from radloop.core.errors import ConfigError, DeliveryError
from radloop.core.settings import DicomDestination, DicomwebDestination, Settings

pytestmark = [pytest.mark.peers]

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _ct_file(ct_j2k_series_dir: Path) -> Path:
    return sorted(ct_j2k_series_dir.glob("*.dcm"))[0]


def _lookup(orthanc: peers.OrthancServer, sop_instance_uid: str) -> list[str]:
    """Orthanc ids of the instances holding ``sop_instance_uid``."""
    found = json.loads(orthanc.request("POST", "/tools/lookup", body=sop_instance_uid.encode()))
    return [item["ID"] for item in found if item["Type"] == "Instance"]


def test_stow_rs_with_basic_auth_is_idempotent(tmp_path: Path, ct_j2k_series_dir: Path) -> None:
    f = _ct_file(ct_j2k_series_dir)
    uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    with peers.OrthancServer(tmp_path / "orthanc", credentials=("radloop", "s3cret")) as orthanc:
        good = DicomwebDestination(
            name="web", url=orthanc.dicomweb_url + "/", auth="basic", username="radloop", password="s3cret"
        )
        wrong = DicomwebDestination.model_validate({**good.model_dump(), "password": "wrong"})
        with pytest.raises(DeliveryError, match="HTTP 401"):
            sender_for(wrong).send(f)
        assert orthanc.instances() == []

        sender_for(good).send(f)
        sender_for(good).send(f)  # an outbox retry after a lost answer

        assert len(_lookup(orthanc, uid)) == 1
        assert len(orthanc.instances()) == 1
        assert orthanc.instance_file(_lookup(orthanc, uid)[0])[128:132] == b"DICM"
    with pytest.raises(DeliveryError, match="Connection"):  # the server is gone
        DicomwebSender(good).send(f)


def test_dicomweb_destination_config_is_checked_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="auth basic needs username"):
        DicomwebDestination(name="w", url="http://127.0.0.1:1/dicom-web", auth="basic", username="u")
    with pytest.raises(ValueError, match="auth bearer needs token"):
        DicomwebDestination(name="w", url="http://127.0.0.1:1/dicom-web", auth="bearer")
    with pytest.raises(ValueError, match="only used with auth bearer"):
        DicomwebDestination(name="w", url="http://127.0.0.1:1/dicom-web", token="t")
    with pytest.raises(ValueError, match="http"):
        DicomwebDestination(name="w", url="127.0.0.1:1/dicom-web")
    settings = Settings.model_validate(
        {
            "destinations": [
                {
                    "kind": "dicomweb",
                    "name": "w",
                    "url": "http://127.0.0.1:1/dicom-web",
                    "auth": "bearer",
                    "token": "super-secret-token",
                    "accepts": ["SC", "SR"],
                },
                {
                    "kind": "dicomweb",
                    "name": "e",
                    "url": "http://127.0.0.1:1/dicom-web",
                    "auth": "bearer",
                    "token_env": "RADLOOP_TEST_STOW_TOKEN",
                },
            ]
        }
    )
    w, e = settings.destination("w"), settings.destination("e")
    assert isinstance(w, DicomwebDestination) and isinstance(e, DicomwebDestination)
    assert (
        "super-secret-token" not in repr(settings) and "super-secret-token" not in settings.model_dump_json()
    )
    assert w.secret() == "super-secret-token"
    assert (w.takes("SC"), w.takes("SEG"), e.takes("SEG")) == (True, False, True)
    monkeypatch.delenv("RADLOOP_TEST_STOW_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="RADLOOP_TEST_STOW_TOKEN"):
        e.secret()
    monkeypatch.setenv("RADLOOP_TEST_STOW_TOKEN", "from-env")
    assert e.secret() == "from-env"


class _ScriptedStow(BaseHTTPRequestHandler):
    """A STOW-RS peer that wants a bearer token and refuses instances it is told to refuse."""

    token: ClassVar[str] = "tok-123"
    refuse: ClassVar[set[str]] = set()
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, {})
            return
        if not self.path.endswith("/studies") or "multipart/related" not in self.headers["Content-Type"]:
            self._answer(415, {})
            return
        refused = [uid for uid in self.refuse if uid.encode() in body]
        if refused:
            failed = [
                {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [0xA700]}}
                for uid in refused
            ]
            self._answer(409, {"00081198": {"vr": "SQ", "Value": failed}})
            return
        self.received.append(body)
        self._answer(200, {})

    def _answer(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Quiet: tests read outcomes, not access logs."""


@pytest.fixture
def scripted_stow() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedStow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_stow_rs_bearer_token_and_refused_instances(
    scripted_stow: str, ct_j2k_series_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _ct_file(ct_j2k_series_dir)
    uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    monkeypatch.setenv("RADLOOP_TEST_BEARER", "tok-123")
    config = DicomwebDestination(
        name="cloud", url=scripted_stow, auth="bearer", token_env="RADLOOP_TEST_BEARER"
    )
    _ScriptedStow.received.clear()
    _ScriptedStow.refuse = set()

    DicomwebSender(config).send(f)
    assert len(_ScriptedStow.received) == 1 and uid.encode() in _ScriptedStow.received[0]

    with pytest.raises(DeliveryError, match="HTTP 401"):
        DicomwebSender(
            DicomwebDestination.model_validate({**config.model_dump(), "token_env": "", "token": "nope"})
        ).send(f)
    _ScriptedStow.refuse = {uid}
    with pytest.raises(DeliveryError, match=rf"HTTP 409.*{uid} \(FailureReason 0xA700\)"):
        DicomwebSender(config).send(f)


def test_c_store_sends_compressed_when_accepted_else_decompressed(
    orthanc: peers.OrthancServer, ct_j2k_series_dir: Path, tmp_path: Path
) -> None:
    f = _ct_file(ct_j2k_series_dir)
    source = pydicom.dcmread(f)
    uid = str(source.SOPInstanceUID)
    assert str(source.file_meta.TransferSyntaxUID) == J2K_LOSSLESS
    for earlier in _lookup(orthanc, uid):  # the session Orthanc may hold it from another test
        orthanc.request("DELETE", f"/instances/{earlier}")

    DicomSender(
        DicomDestination(name="pacs", host="127.0.0.1", port=orthanc.dicom_port, ae_title=orthanc.aet)
    ).send(f)
    (stored,) = _lookup(orthanc, uid)
    assert orthanc.instance_metadata(stored, "TransferSyntax") == J2K_LOSSLESS  # sent as it was

    uncompressed_only = {"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", EXPLICIT_LE]}
    with peers.OrthancServer(tmp_path / "plain", extra_config=uncompressed_only) as plain:
        DicomSender(
            DicomDestination(name="old", host="127.0.0.1", port=plain.dicom_port, ae_title=plain.aet)
        ).send(f)
        (stored,) = _lookup(plain, uid)
        assert plain.instance_metadata(stored, "TransferSyntax") in (EXPLICIT_LE, "1.2.840.10008.1.2")
        received = pydicom.dcmread(pydicom.filebase.DicomBytesIO(plain.instance_file(stored)))
        np.testing.assert_array_equal(received.pixel_array, source.pixel_array)  # lossless either way
