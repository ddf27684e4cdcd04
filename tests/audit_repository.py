"""A real syslog audit repository for tests: Debian's ``rsyslogd`` with its TLS input (gtls driver).

:func:`make_certificates` makes a CA, a server certificate for 127.0.0.1 and a client certificate
with ``openssl`` (through :mod:`pki`, the DICOM TLS tests' PKI); :class:`RsyslogServer` writes an
rsyslog config (``imtcp`` with ``StreamDriver.Mode=1``, client certificates required and checked
against the CA, octet-counted framing), runs ``rsyslogd -n -f CONF -i PIDFILE`` on a free port and
appends every message it receives to a file as ``MSGID STRUCTURED-DATA MSG``, one line each.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import peers
from pki import Pki

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"  # /usr/sbin is not on every PATH
RSYSLOG_GTLS = next(
    iter(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")), Path("/usr/lib/rsyslog/lmnsd_gtls.so")
)


@dataclass(frozen=True)
class Certificates:
    """PEM files made by :func:`make_certificates`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path) -> Certificates:
    """A throw-away CA (:class:`pki.Pki`) and two certificates it signed, for the server and the
    client (both valid for 127.0.0.1 and localhost)."""
    authority = Pki(folder)
    server = authority.issue("server", "server")
    client = authority.issue("client", "radloop")
    ca = authority.ca.certificate
    return Certificates(ca, server.certificate, server.private_key, client.certificate, client.private_key)


class RsyslogServer:
    """``rsyslogd`` listening with TLS on 127.0.0.1:``port``; received messages in :attr:`output`."""

    def __init__(self, workdir: Path, certs: Certificates, port: int | None = None) -> None:
        if not Path(RSYSLOGD).is_file():
            raise AssertionError("rsyslogd missing: `apt-get install rsyslog rsyslog-gnutls`")
        if not RSYSLOG_GTLS.is_file():
            raise AssertionError(f"{RSYSLOG_GTLS} missing: `apt-get install rsyslog-gnutls`")
        self.workdir = workdir
        self.port = port or peers.free_port()
        self.output = workdir / "audit.log"
        self.config = workdir / "rsyslog.conf"
        self.pidfile = workdir / "rsyslogd.pid"
        self.log = workdir / "rsyslogd.out"
        (workdir / "spool").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""global(workDirectory="{workdir / "spool"}" maxMessageSize="256k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{certs.ca}"
       defaultNetstreamDriverCertFile="{certs.server_cert}"
       defaultNetstreamDriverKeyFile="{certs.server_key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{self.port}" name="atna")
template(name="atna" type="string" string="%msgid% %structured-data% %msg%\\n")
action(type="omfile" file="{self.output}" template="atna" flushOnTXEnd="on")
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RsyslogServer:
        """Start rsyslogd in the foreground and wait until its TLS port accepts connections."""
        self.pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.pidfile)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        peers.wait_for(self._listening, timeout, interval=0.1, what=f"rsyslogd on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited with {self.proc.returncode}: {self.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM (rsyslogd flushes its output first); SIGKILL after a grace period."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def messages(self) -> list[tuple[str, str, str]]:
        """Every received message as (MSGID, STRUCTURED-DATA, MSG), in arrival order."""
        if not self.output.is_file():
            return []
        found = []
        for line in self.output.read_text(encoding="utf-8", errors="replace").splitlines():
            m = re.match(r"(\S+) (\[[^\]]*\]|-) (.*)$", line)
            if m:
                found.append((m.group(1), m.group(2), m.group(3).lstrip("\ufeff").strip()))
        return found
