"""DICOM TLS settings and SSL contexts: what is refused at start, and what a context allows.

Certificates are made by ``openssl`` (:mod:`pki`); the handshakes with real DCMTK and Orthanc
peers are in ``tests/integration/test_dicom_tls.py``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pki import Pki
from radloop.connector.dimse.tls import check_dicom_tls, client_context, server_context
from radloop.core.errors import ConfigError
from radloop.core.settings import DicomTlsClient, Settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"))
    made.issue("server", "localhost")
    made.issue("other", "other")
    return made


def _settings(tmp_path: Path, tls: dict[str, Any], listener: dict[str, Any] | None = None) -> Settings:
    lst = {"ae_title": "RADLOOP", "tls": "required", **(listener or {})}
    return Settings(data_dir=tmp_path / "data", dicom={"port": 11112, "tls": tls, "listeners": [lst]})


def _server_tls(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "certificate": str(pki.folder / "server.crt"),
        "private_key": str(pki.folder / "server.key"),
        "ca_certificates": str(pki.ca.certificate),
        **extra,
    }


def test_defaults_are_plain_and_open_no_tls_port(tmp_path: Path) -> None:
    dicom = Settings(data_dir=tmp_path).dicom
    assert all(lst.tls == "off" for lst in dicom.listeners)
    assert dicom.serves_plain() and not dicom.serves_tls()
    assert dicom.tls.port == 2762


@pytest.mark.parametrize(
    ("tls", "listener", "message"),
    [
        ({}, {}, "set dicom.tls.certificate"),
        ({"certificate": "/x.crt"}, {}, "certificate and private_key go together"),
        (
            {"certificate": "/x.crt", "private_key": "/x.key"},
            {},
            "require_client_certificate needs dicom.tls.ca_certificates",
        ),
        (
            {"certificate": "/x.crt", "private_key": "/x.key", "ca_certificates": "/ca", "port": 11112},
            {},
            "TLS needs a port of its own",
        ),
        (
            {"certificate": "/x.crt", "private_key": "/x.key", "ca_certificates": "/ca"},
            {"tls": "off", "allowed_callers": [{"ae_title": "MOD", "certificate_cn": "MOD"}]},
            "only a TLS connection carries",
        ),
        ({"certificate": "/x.crt", "private_key": "/x.key", "min_version": "1.1"}, {}, "min_version"),
    ],
)
def test_inconsistent_tls_settings_are_refused(
    tmp_path: Path, tls: dict[str, Any], listener: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(tmp_path, tls, listener)


def test_missing_or_unusable_files_stop_the_start_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = _settings(tmp_path, _server_tls(pki, certificate=str(tmp_path / "nope.crt")))
    with pytest.raises(ConfigError, match=r"dicom\.tls\.certificate: cannot read .*nope\.crt"):
        check_dicom_tls(missing)
    mismatched = _settings(tmp_path, _server_tls(pki, private_key=str(pki.folder / "other.key")))
    with pytest.raises(ConfigError, match="key does not match the certificate"):
        check_dicom_tls(mismatched)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"dicom\.tls\.ca_certificates .*no PEM certificate"):
        check_dicom_tls(_settings(tmp_path, _server_tls(pki, ca_certificates=str(not_pem))))
    with pytest.raises(ConfigError, match=r"dicom\.tls\.ciphers"):
        check_dicom_tls(_settings(tmp_path, _server_tls(pki, ciphers="NO-SUCH-CIPHER")))
    bad_destination = Settings(
        data_dir=tmp_path / "data",
        destinations=[
            {
                "kind": "dicom",
                "name": "pacs",
                "host": "127.0.0.1",
                "port": 2762,
                "ae_title": "PACS",
                "tls": {"ca_certificates": str(tmp_path / "missing-ca.pem")},
            }
        ],
    )
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.ca_certificates: cannot read"):
        check_dicom_tls(bad_destination)
    check_dicom_tls(_settings(tmp_path, _server_tls(pki)))  # the good files pass


def test_server_context_is_tls12_plus_forward_secret_aead_with_client_certificates(pki: Pki) -> None:
    settings = _settings(Path("/tmp"), _server_tls(pki))
    ctx = server_context(settings.dicom.tls)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 cipher suite left"
    for cipher in tls12:
        assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]  # forward secrecy
        assert cipher["aead"], cipher["name"]  # GCM / ChaCha20-Poly1305 only: no CBC, no RC4
    optional = _settings(Path("/tmp"), _server_tls(pki, require_client_certificate=False))
    assert server_context(optional.dicom.tls).verify_mode == ssl.CERT_OPTIONAL
    strict = _settings(Path("/tmp"), _server_tls(pki, min_version="1.3"))
    assert server_context(strict.dicom.tls).minimum_version == ssl.TLSVersion.TLSv1_3


def test_client_context_verifies_the_peer_and_its_host_name(pki: Pki) -> None:
    ctx = client_context(DicomTlsClient(ca_certificates=pki.ca.certificate), "destinations[pacs].tls")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    loose = client_context(DicomTlsClient(ca_certificates=pki.ca.certificate, check_hostname=False), "x")
    assert loose.verify_mode == ssl.CERT_REQUIRED and not loose.check_hostname
