"""Send the queued DICOM audit messages to a syslog audit repository (IHE ATNA Record Audit Event).

Each ``audit_message`` row becomes one RFC 5424 syslog message: ``<PRI>1 TIMESTAMP HOSTNAME
radloop PROCID IHE+RFC-3881 [meta sequenceId="ROW ID"] BOM XML``, facility 10 (security/
authorization), severity notice for a success and warning/error for failures, MSGID as IHE
ITI-20 names it, and the row id as the RFC 5424 ``meta`` ``sequenceId`` so the repository can
tell a resent message from a new one. Messages travel over TLS with RFC 5425 octet-counting
framing (``LENGTH SP SYSLOG-MSG``).

Delivery is at least once: a tick opens one connection, writes a batch of the oldest pending rows,
then closes its sending side (TLS ``close_notify``) and waits until the repository closes too;
only then, the repository having read everything up to the close, are the rows marked sent.
Anything short of that (refused, reset, timed out) marks nothing, so the whole batch is written
again on the next try: an unreachable repository loses nothing. A row can be written twice only if
the connection broke after the repository read it but before radloop saw the clean close, or if
radloop died between the close and the commit; the resent copy has the same ``sequenceId``.
Failures back off exponentially (``audit.retry_base_s`` doubling up to ``audit.retry_cap_s``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from datetime import UTC, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import col, select, update

from radloop.core.db import session_scope
from radloop.core.errors import ConfigError
from radloop.core.jobs import backoff_seconds
from radloop.core.models import AuditMessage, utcnow
from radloop.core.settings import AuditRepository, AuditSettings

log = logging.getLogger(__name__)

APP_NAME = "radloop"
MSGID = "IHE+RFC-3881"
FACILITY = 10  # security/authorization messages (authpriv)
BOM = b"\xef\xbb\xbf"


def severity(outcome: int) -> int:
    """Syslog severity of an EventOutcomeIndicator: notice (5) for success, warning (4), error (3)."""
    return 5 if outcome == 0 else 4 if outcome == 4 else 3


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, no space, at most ``limit`` characters."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or "-"


def syslog_message(row: AuditMessage, hostname: str, procid: str) -> bytes:
    """One RFC 5424 message for ``row`` (no framing)."""
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sequence = ((row.id or 0) - 1) % 2_147_483_647 + 1  # RFC 5424 7.3.1: 1 … 2147483647
    header = (
        f"<{FACILITY * 8 + severity(row.outcome)}>1 {stamp} {_printable(hostname, 255)} {APP_NAME} "
        f'{_printable(procid, 128)} {MSGID} [meta sequenceId="{sequence}"] '
    )
    return header.encode("ascii") + BOM + row.xml.encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class RepositoryError(Exception):
    """The repository could not be reached or did not take a whole batch."""


def tls_context(repo: AuditRepository) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer, the repository's certificate checked, our certificate offered."""
    try:
        context = ssl.create_default_context(cafile=str(repo.ca_file) if repo.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if repo.cert_file is not None and repo.key_file is not None:
            context.load_cert_chain(str(repo.cert_file), str(repo.key_file))
    except (OSError, ssl.SSLError) as e:
        files = f"ca_file={repo.ca_file}, cert_file={repo.cert_file}, key_file={repo.key_file}"
        raise ConfigError(f"audit.repository: cannot load the TLS files ({files}): {e}") from e
    return context


class AuditSender:
    """Delivers pending ``audit_message`` rows; :meth:`tick` from a ``run_every`` loop of the server."""

    def __init__(self, settings: AuditSettings, engine: Engine) -> None:
        if settings.repository is None:
            raise ValueError("AuditSender needs audit.repository")
        self.settings = settings
        self.repo: AuditRepository = settings.repository
        self.engine = engine
        self.hostname = socket.gethostname()
        self.procid = str(os.getpid())
        self._context = tls_context(self.repo) if self.repo.tls else None
        self._failures = 0
        self._next_try = 0.0

    def tick(self) -> int:
        """Send pending messages batch by batch until none is left or a batch fails; returns how many."""
        if time.monotonic() < self._next_try:
            return 0
        sent = 0
        while True:
            with session_scope(self.engine) as s:
                rows = s.exec(
                    select(AuditMessage)
                    .where(col(AuditMessage.pending).is_(True))
                    .order_by(col(AuditMessage.id))
                    .limit(self.settings.batch)
                ).all()
                batch = [(r.id, syslog_message(r, self.hostname, self.procid)) for r in rows]
            if not batch:
                return sent
            try:
                self._write([message for _, message in batch])
            except (OSError, RepositoryError) as e:
                self._failed([i for i, _ in batch if i is not None], str(e))
                return sent
            self._mark_sent([i for i, _ in batch if i is not None])
            sent += len(batch)
            if self._failures:
                log.info("audit repository %s:%d reachable again", self.repo.host, self.repo.port)
            self._failures = 0

    def _write(self, messages: list[bytes]) -> None:
        """Write ``messages`` on one connection and wait for the repository's clean close."""
        timeout = self.repo.timeout_s
        raw = socket.create_connection((self.repo.host, self.repo.port), timeout=timeout)
        try:
            if self._context is not None:
                server_name = self.repo.server_name or self.repo.host
                conn = self._context.wrap_socket(raw, server_hostname=server_name)
                conn.sendall(b"".join(frame(m) for m in messages))
                try:
                    _close_tls(conn)
                finally:
                    conn.close()
            else:
                raw.sendall(b"".join(frame(m) for m in messages))
                raw.shutdown(socket.SHUT_WR)
                _await_eof(raw)
        finally:
            raw.close()

    def _mark_sent(self, ids: list[int]) -> None:
        with session_scope(self.engine) as s:
            s.exec(
                update(AuditMessage)
                .where(col(AuditMessage.id).in_(ids))
                .values(pending=False, sent_at=utcnow(), last_error="", attempts=AuditMessage.attempts + 1)
            )

    def _failed(self, ids: list[int], error: str) -> None:
        self._failures += 1
        delay = backoff_seconds(self._failures, self.settings.retry_base_s, self.settings.retry_cap_s)
        self._next_try = time.monotonic() + delay
        with session_scope(self.engine) as s:
            s.exec(
                update(AuditMessage)
                .where(col(AuditMessage.id).in_(ids))
                .values(
                    last_error=error[:500],
                    attempts=AuditMessage.attempts + 1,
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
            )
        log.warning(
            "audit repository %s:%d: %d message(s) not sent (attempt %d), retry in %.0f s: %s",
            self.repo.host,
            self.repo.port,
            len(ids),
            self._failures,
            delay,
            error,
        )


SETTLE_S = 0.2
"""After the repository's close, how long radloop waits for a reset that says it did not read everything."""


def _close_tls(conn: ssl.SSLSocket) -> None:
    """Send ``close_notify`` and wait for the repository to close: then it has read the whole stream.

    rsyslog closes without a ``close_notify`` of its own (an EOF here). A repository that refused
    us after the handshake (no trusted client certificate) closed before reading: our data then
    draws a reset, which :func:`_check_no_reset` catches."""
    try:
        conn.unwrap()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        pass  # closed without its own close_notify
    except (ConnectionResetError, BrokenPipeError) as e:
        raise RepositoryError(f"the repository closed the connection before reading everything: {e}") from e
    _check_no_reset(conn)


def _await_eof(sock: socket.socket) -> None:
    """Read until the repository closes its side (it sends nothing on a syslog connection)."""
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError) as e:
        raise RepositoryError(f"the repository closed the connection before reading everything: {e}") from e
    _check_no_reset(sock)


def _check_no_reset(sock: socket.socket) -> None:
    """A reset arriving just after the close means data reached a socket that was already closed."""
    time.sleep(SETTLE_S)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise RepositoryError(f"the repository reset the connection: {os.strerror(error)}")
