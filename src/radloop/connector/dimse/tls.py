"""DICOM TLS (PS3.15 Annex B; the IHE ATNA secure node): SSL contexts, the SCP's TLS port, peer checks.

**Server side.** Listeners with ``tls: optional`` or ``required`` answer on ``dicom.tls.port``
(2762 by convention) as well as, or instead of, the plain port. The listening socket accepts
plain TCP; each connection's TLS handshake runs in that connection's own thread with the
A-ASSOCIATE-RQ deadline (``association_request_timeout_s``), never in the accept loop (where
pynetdicom would run it: one silent peer would stall every other caller). Handshakes in progress
count as pending connections (``max_pending_connections``). A failed handshake (no certificate,
an untrusted one, TLS 1.1, no shared cipher) is logged with the peer's address and the reason,
and the connection is closed before any DICOM is read.

When the association is requested, :func:`transport_refusal` rejects a plain association to a
``required`` listener and a TLS one to an ``off`` listener (A-ASSOCIATE-RJ, called AE title not
recognised: that AE is not served on that port), and :func:`peer_common_name` gives the
allowlist the subject CN of the caller's verified certificate (``allowed_callers[].certificate_cn``).

**Client side.** :func:`tls_args` turns a :class:`~radloop.core.settings.DicomTlsClient` into
pynetdicom's ``associate(tls_args=...)``: the peer's certificate is verified against
``ca_certificates`` (or the system store) and, by default, its host name; radloop presents its
own certificate when one is configured.

Both sides: TLS 1.2 or newer (``min_version``), TLS 1.2 cipher suites from ``ciphers`` (forward
secret AEAD only by default), no compression, no renegotiation. Files are read when radloop
starts (:func:`check_dicom_tls`); a missing or unreadable file, a key that does not match its
certificate or a bad cipher list is a :class:`~radloop.core.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pynetdicom.transport import ThreadedAssociationServer

from radloop.connector.dimse.guard import GuardedRequestHandler, GuardLimits, start_guarded_server
from radloop.connector.dimse.store_fast import StoreHandler
from radloop.connector.peer_text import shown
from radloop.core.errors import ConfigError
from radloop.core.settings import DicomDestination, DimseSource

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

    from radloop.core.settings import (
        DicomSettings,
        DicomTlsClient,
        DicomTlsSettings,
        ListenerSettings,
        Settings,
    )

log = logging.getLogger(__name__)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# --------------------------------------------------------------------------- SSL contexts


def server_context(tls: DicomTlsSettings, where: str = "dicom.tls") -> ssl.SSLContext:
    """The SCP's context: our certificate, callers' certificates verified against ``ca_certificates``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, tls.min_version, tls.ciphers, where)
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError(f"{where}.certificate and {where}.private_key must be set for a TLS listener")
    _load_chain(ctx, tls.certificate, tls.private_key, tls.private_key_password, where)
    if tls.ca_certificates is not None:
        _load_cas(ctx, tls.ca_certificates, where)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    elif tls.require_client_certificate:
        raise ConfigError(f"{where}.require_client_certificate needs {where}.ca_certificates")
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: DicomTlsClient, where: str) -> ssl.SSLContext:
    """A context towards a peer: its certificate verified (CA, host name), ours presented if set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, tls.min_version, tls.ciphers, where)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_certificates is not None:
        _load_cas(ctx, tls.ca_certificates, where)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(ctx, tls.certificate, tls.private_key, tls.private_key_password, where)
    return ctx


def tls_args(tls: DicomTlsClient | None, host: str, where: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``associate(tls_args=...)`` for a peer at ``host``; None for plain TCP."""
    if tls is None:
        return None
    return client_context(tls, where), tls.server_name or host


def _harden(ctx: ssl.SSLContext, min_version: str, ciphers: str, where: str) -> None:
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError as e:
        raise ConfigError(f"{where}.ciphers {ciphers!r}: no cipher suite OpenSSL knows ({e})") from e


def _load_chain(ctx: ssl.SSLContext, certificate: Path, private_key: Path, password: Any, where: str) -> None:
    _readable(certificate, f"{where}.certificate")
    _readable(private_key, f"{where}.private_key")
    secret = password.get_secret_value() if password is not None else None
    try:
        ctx.load_cert_chain(certificate, private_key, password=secret)
    except ssl.SSLError as e:
        raise ConfigError(
            f"{where}: cannot use certificate {certificate} with private key {private_key} "
            f"(not PEM, key does not match the certificate, or wrong password): {e}"
        ) from e


def _load_cas(ctx: ssl.SSLContext, ca_certificates: Path, where: str) -> None:
    _readable(ca_certificates, f"{where}.ca_certificates")
    try:
        ctx.load_verify_locations(cafile=ca_certificates)
    except ssl.SSLError as e:
        raise ConfigError(f"{where}.ca_certificates {ca_certificates}: no PEM certificate in it ({e})") from e


def _readable(path: Path, setting: str) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror or e}") from e


def check_dicom_tls(settings: Settings) -> None:
    """Build every DICOM TLS context the settings describe, so a bad file stops radloop at start."""
    if settings.dicom.serves_tls():
        server_context(settings.dicom.tls)
    for dest in settings.destinations:
        if isinstance(dest, DicomDestination) and dest.tls is not None:
            client_context(dest.tls, f"destinations[{dest.name}].tls")
    for src in settings.sources:
        if isinstance(src, DimseSource) and src.tls is not None:
            client_context(src.tls, f"sources[{src.name}].tls")


# --------------------------------------------------------------------------- the TLS port


class TlsAssociationServer(ThreadedAssociationServer):
    """An association server whose accepted sockets are wrapped, but not yet handshaken."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshakes = 0
        self.handshakes_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; the handshake is left to the connection's thread (:class:`TlsRequestHandler`)."""
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, address


class TlsRequestHandler(GuardedRequestHandler):
    """Completes the TLS handshake within the A-ASSOCIATE-RQ deadline, then guards as usual."""

    def handle(self) -> None:
        server = cast(TlsAssociationServer, self.server)
        sock = cast(ssl.SSLSocket, self.request)
        peer = shown(self.client_address[0])
        pending = sum(1 for a in server.active_associations if a.requestor.primitive is None and a.is_alive())
        with server.handshakes_lock:
            crowded = server.handshakes + pending >= self.limits.max_pending_connections
            if not crowded:
                server.handshakes += 1
        if crowded:
            log.warning("closing TLS connection from %s at once: max_pending_connections reached", peer)
            _close(sock)
            return
        try:
            _handshake(sock, time.monotonic() + self.limits.request_timeout_s)
        except (ssl.SSLError, OSError) as e:
            log.warning(
                "DICOM TLS handshake with %s failed, connection closed: %s", peer, shown(_reason(e), 200)
            )
            _close(sock)
            return
        finally:
            with server.handshakes_lock:
                server.handshakes -= 1
        log.debug(
            "DICOM TLS from %s: %s, %s, client certificate %s",
            peer,
            sock.version(),
            (sock.cipher() or ("?",))[0],
            shown(_common_name(sock) or "none"),
        )
        super().handle()


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The server side of the handshake, finished by ``deadline`` in total (a peer dripping its
    ClientHello a byte at a time gets no more time than a silent one); TimeoutError otherwise."""
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                readable, writable = [sock], []
            except ssl.SSLWantWriteError:
                readable, writable = [], [sock]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
                raise TimeoutError("TLS handshake deadline passed")
    finally:
        if sock.fileno() >= 0:
            sock.setblocking(True)


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {error.verify_message or error.reason}"
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    if isinstance(error, TimeoutError):
        return "no complete handshake within association_request_timeout_s"
    return f"{type(error).__name__}: {error}"


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def start_tls_server(
    ae: ApplicationEntity,
    dicom: DicomSettings,
    limits: GuardLimits,
    handlers: list[Any],
    store_handler: StoreHandler | None = None,
) -> ThreadedAssociationServer | None:
    """Start the SCP's TLS port if a listener uses TLS (non-blocking); None if none does.
    ``store_handler``: as for :func:`~radloop.connector.dimse.guard.start_guarded_server`."""
    if not dicom.serves_tls():
        return None
    server = start_guarded_server(
        ae,
        (dicom.host, dicom.tls.port),
        limits,
        handlers,
        ssl_context=server_context(dicom.tls),
        server_class=TlsAssociationServer,
        request_handler=TlsRequestHandler,
        store_handler=store_handler,
    )
    port = int(server.server_address[1])
    titles = [f"{lst.ae_title} ({lst.tls})" for lst in dicom.listeners if lst.tls != "off"]
    clients = "required" if dicom.tls.require_client_certificate else "verified if presented"
    log.info(
        "DICOM TLS listening on %s:%s for AE titles %s; client certificates %s",
        dicom.host,
        port,
        ", ".join(titles),
        clients,
    )
    return server


# --------------------------------------------------------------------------- association checks


def is_tls(assoc: Any) -> bool:
    """Whether the association's connection is DICOM TLS."""
    asocket = assoc.dul.socket
    return isinstance(getattr(asocket, "socket", None), ssl.SSLSocket)


def peer_common_name(assoc: Any) -> str | None:
    """Subject CN of the caller's *verified* certificate; None over plain TCP or without one."""
    asocket = assoc.dul.socket
    sock = getattr(asocket, "socket", None)
    return _common_name(sock) if isinstance(sock, ssl.SSLSocket) else None


def _common_name(sock: ssl.SSLSocket) -> str | None:
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], (cert or {}).get("subject", ()))
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def transport_refusal(listener: ListenerSettings, assoc: Any) -> str | None:
    """Why ``listener`` may not be reached over this association's transport, or None."""
    secure = is_tls(assoc)
    if listener.tls == "required" and not secure:
        return f"AE '{listener.ae_title}' requires DICOM TLS; the caller came over plain TCP"
    if listener.tls == "off" and secure:
        return f"AE '{listener.ae_title}' has tls off; the caller came over the TLS port"
    return None
