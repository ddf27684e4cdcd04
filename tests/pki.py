"""A throw-away PKI for DICOM TLS tests, made by the real ``openssl`` command line.

Two certification authorities: ``ca`` (trusted by every peer in a test) and ``rogue`` (trusted by
none). Leaf certificates are ECDSA P-256 (fast to make; DCMTK, Orthanc and Python's ssl all take
them), valid for two days, with subjectAltName ``DNS:localhost, IP:127.0.0.1`` and both server
and client extended key usage, so any of them can serve or call. A plain module, imported as
``pki`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path

import peers

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyAgreement\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
)


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key (PEM files)."""

    certificate: Path
    private_key: Path

    def tls_files(self) -> dict[str, str]:
        """radloop's ``certificate``/``private_key`` settings for this credential."""
        return {"certificate": str(self.certificate), "private_key": str(self.private_key)}

    def dcmtk_args(self, ca: Path) -> list[str]:
        """DCMTK (storescu, echoscu) options: TLS with this credential, peer verified against ``ca``."""
        return ["+tls", str(self.private_key), str(self.certificate), "+cf", str(ca)]


def _openssl(*args: str, cwd: Path) -> None:
    binary = peers.require_binary("openssl")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


class Pki:
    """Certification authorities and the leaf certificates they signed, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._serials = itertools.count(1000)
        self.ca = self._authority("ca", "radloop test CA")
        self.rogue = self._authority("rogue", "untrusted test CA")

    def _authority(self, name: str, cn: str) -> Credential:
        cred = Credential(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        _openssl(
            "req", "-x509", *_EC, "-keyout", cred.private_key.name, "-out", cred.certificate.name,
            "-days", "2", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.folder,
        )  # fmt: skip
        return cred

    def issue(self, name: str, cn: str, by: Credential | None = None) -> Credential:
        """A leaf certificate with subject ``CN=cn``, signed by ``by`` (default: the trusted CA)."""
        authority = by or self.ca
        cred = Credential(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        extensions = self.folder / f"{name}.ext"
        extensions.write_text(_LEAF_EXTENSIONS)
        _openssl(
            "req", *_EC, "-keyout", cred.private_key.name, "-out", f"{name}.csr", "-subj", f"/CN={cn}",
            cwd=self.folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", str(authority.certificate),
            "-CAkey", str(authority.private_key), "-set_serial", str(next(self._serials)),
            "-days", "2", "-extfile", extensions.name, "-out", cred.certificate.name,
            cwd=self.folder,
        )  # fmt: skip
        return cred
