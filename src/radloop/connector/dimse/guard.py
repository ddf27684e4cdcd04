"""Association guard: the SCP's defences against slow, silent and hostile peers (issue 12).

pynetdicom 3's acceptor reads each PDU with a blocking ``recv`` of exactly the length the peer
declares, and counts every open connection as an association. So a peer that sends ``01 00 00``
and stops (or one byte every 20 s) blocks its reactor thread for ever and holds an association
slot; a declared length of 0xFFFFFFF0 is buffered before any check; an A-ASSOCIATE-RQ with an
even presentation-context ID raises inside the state machine and kills the reactor thread.

Subclasses here (no global patching) change that, configured from ``dicom.*`` settings:

* :class:`GuardedDUL` reads PDUs with a deadline: a connection must deliver its whole
  A-ASSOCIATE-RQ within ``association_request_timeout_s`` of opening (an ARTIM-style bound that
  covers a dripping peer, not only a silent one); any later PDU must complete within
  ``network_timeout_s`` of its first byte plus its declared length at
  ``min_transfer_rate_bytes_s`` (a large PDU on a slow link passes, a drip does not); idle
  associations end after ``network_timeout_s``, and none outlives ``max_association_s``.
  A declared PDU length over the cap (``max_associate_rq_bytes`` for an A-ASSOCIATE-RQ and for
  anything before association, the negotiated ``max_pdu`` for P-DATA-TF) is answered with an
  A-ABORT before a byte of its body is read; an A-ASSOCIATE-RQ that cannot be turned into a
  primitive (an even presentation-context ID) is an invalid PDU, aborted the same way.
* :class:`GuardedAssociation` stops waiting for the A-ASSOCIATE-RQ as soon as its DUL gives up,
  so the connection's thread ends at once.
* :class:`GuardedRequestHandler` closes a new connection at once while
  ``max_pending_connections`` are still awaiting their A-ASSOCIATE-RQ.

Connections that have not sent an A-ASSOCIATE-RQ never count against ``max_associations``: the
SCP counts :func:`requested_associations` when it decides on a request; pynetdicom's own count
(every connection) is set high enough to act only as a backstop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from radloop.connector.dimse.store_fast import Fed, StoreFastPath, StoreHandler, association_peer
from radloop.connector.dimse.store_response import LeanDIMSE
from radloop.connector.peer_text import shown

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

    from radloop.core.settings import DicomSettings

log = logging.getLogger(__name__)

_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_SMALL_PDU = 1024  # A-ASSOCIATE-AC/RJ, A-RELEASE-RQ/RP and A-ABORT bodies are a few bytes
_READ_STEP = 1 << 20
_DRAIN_BYTES = 4 << 20  # read and dropped after an A-ABORT, before closing regardless
_REACTOR_POLL_S = 0.005  # the association loop's checks (release, abort, timeouts) when no message comes
_DUL_IDLE_S = 0.005  # the DUL loop's checks (ARTIM, kill) when neither the peer nor our side has work


@dataclass(frozen=True)
class GuardLimits:
    """The bounds the guard enforces, from ``dicom.*`` settings."""

    request_timeout_s: float = 10.0
    pdu_timeout_s: float = 60.0
    min_transfer_rate: float = 64 << 10
    max_association_s: float = 7200.0
    max_associate_rq_bytes: int = 256 << 10
    max_pdata_bytes: int = (512 << 20) + (64 << 10)
    max_pending_connections: int = 128
    max_instance_bytes: int = 512 << 20

    @classmethod
    def from_settings(cls, dicom: DicomSettings) -> GuardLimits:
        """``max_pdu`` 0 (unlimited) caps P-DATA at ``max_instance_bytes`` plus room for the command:
        a larger PDU can only carry part of an instance that would be refused anyway."""
        pdata = dicom.max_pdu or dicom.max_instance_bytes + (64 << 10)
        return cls(
            request_timeout_s=dicom.association_request_timeout_s,
            pdu_timeout_s=dicom.network_timeout_s,
            min_transfer_rate=dicom.min_transfer_rate_bytes_s,
            max_association_s=dicom.max_association_s,
            max_associate_rq_bytes=dicom.max_associate_rq_bytes,
            max_pdata_bytes=pdata,
            max_pending_connections=dicom.max_pending_connections,
            max_instance_bytes=dicom.max_instance_bytes,
        )


def _peer(dul: DULServiceProvider) -> str:
    return association_peer(dul.assoc)


# Events a local user (our acceptor thread) raises: A-ASSOCIATE accept/reject, P-DATA, A-RELEASE
# request/response, A-ABORT request (PS3.8 Table 9-10, Evt7-Evt15).
_LOCAL_EVENTS = frozenset({"Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})


class GuardedDUL(DULServiceProvider):
    """The DICOM upper layer with bounded PDU reads (deadline, declared-length cap)."""

    def __init__(self, assoc: Association, limits: GuardLimits) -> None:
        super().__init__(assoc)
        self.limits = limits
        self.opened_at = time.monotonic()
        self._refused = False
        self._drain_left = _DRAIN_BYTES
        self._do_action = self.state_machine.do_action
        self.state_machine.do_action = self._do_action_closing  # type: ignore[method-assign]
        self._wake_r: socket.socket | None = None  # written to when a primitive is queued to send
        self._wake_w: socket.socket | None = None
        self.fast: StoreFastPath | None = None  # plain C-STOREs served in this thread (store_fast)

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive to send (pynetdicom) and wake the reactor at once."""
        super().send_pdu(primitive)
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full (already woken) or closed (the loop ended)
                wake.send(b"\0")

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's DUL loop, but idle waits end when there is work instead of sleeping.

        pynetdicom sleeps 1 ms whenever a pass found nothing to do, so each C-STORE waits up to a
        millisecond before its first PDU is read and again before its response is sent (the
        association thread queues it here), and on a loaded machine each wake-up waits for a CPU.
        Here the idle wait is a ``select`` on the peer's socket and on a wake-up socket that
        :meth:`send_pdu` writes to, bounded by ``_DUL_IDLE_S`` so that the ARTIM timer and a kill
        are still seen within a few milliseconds.
        """
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._reactor_loop()
        finally:
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, None, None
            wake_r.close()
            wake_w.close()

    def _reactor_loop(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():  # one primitive to encode and send
                    pass
                elif self._is_transport_event():  # or one PDU received and decoded
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: abort bypassing the state machine
                log.error("exception in the DUL reactor, aborting the association")
                log.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                asocket = cast(AssociationSocket, self.socket)
                asocket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False

    def _wait_for_work(self) -> None:
        """Until the peer sends, a primitive is queued, or ``_DUL_IDLE_S`` passes."""
        wake = cast(socket.socket, self._wake_r)
        asocket = self.socket
        sock = asocket.socket if asocket is not None else None
        if not self.to_provider_queue.empty():
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes buffered where select cannot see them
        waited: list[Any] = [wake]
        if sock is not None and sock.fileno() >= 0:
            waited.append(sock)
        try:
            ready, _, _ = select.select(waited, [], [], _DUL_IDLE_S)
        except (OSError, ValueError):  # the socket closed meanwhile: the next pass sees it
            return
        if wake in ready:
            with contextlib.suppress(OSError):
                wake.recv(4096)

    def _do_action_closing(self, event: str) -> None:
        """The state machine's step, except that a local response (accept, reject, data) that
        crosses our own A-ABORT is dropped: once in Sta13 the connection only waits to close.
        pynetdicom raises InvalidEventError there, which kills the DUL's reactor thread (found by
        fuzzing: an A-ASSOCIATE-RQ refused by the guard while the acceptor was answering it)."""
        if self.state_machine.current_state == "Sta13" and event in _LOCAL_EVENTS:
            log.debug("%s after A-ABORT from %s: dropped", event, _peer(self))
            return
        self._do_action(event)

    def idle_timer_expired(self) -> bool:
        """The idle timeout (``network_timeout_s``), or the total-duration bound, has passed."""
        if time.monotonic() - self.opened_at > self.limits.max_association_s:
            log.warning(
                "association from %s open longer than max_association_s (%.0f s): aborting",
                _peer(self),
                self.limits.max_association_s,
            )
            return True
        return bool(super().idle_timer_expired())

    def _read_pdu_data(self) -> None:
        """Read one PDU within its deadline and queue its event; a C-STORE that the fast path
        serves (:mod:`~radloop.connector.dimse.store_fast`) is read here to its last PDU."""
        fast = self.fast
        while not self._kill_thread:
            pdu = self._read_pdu()
            if pdu is None:
                if fast is not None:
                    fast.reset()
                return
            header, body = pdu
            if fast is not None and header[0] == _P_DATA_TF and self.state_machine.current_state == "Sta6":
                fed = fast.feed(body)
                if fed is Fed.MORE:
                    self._idle_timer.restart()
                    continue
                if fed is Fed.DONE:
                    return
                if fed is Fed.INVALID:
                    self.event_queue.put("Evt19")
                    self._refused = True
                    return
            elif fast is not None:
                fast.reset()  # a release or abort inside a C-STORE: the partial instance is dropped
            self._queue_pdu(header, body)
            return

    def _read_pdu(self) -> tuple[bytearray, bytearray] | None:
        """One PDU's header and body within its deadline; None if there is none to decode: the
        peer was too slow or closed the connection, or an over-long declared length or an unknown
        PDU type was refused (an A-ABORT queued) before reading its body."""
        asocket = cast(AssociationSocket, self.socket)
        if self._refused:
            self._drain(asocket)
            return None
        # Sta1: the connection's Evt5 may still be queued behind the first bytes read
        awaiting_request = self.state_machine.current_state in ("Sta1", "Sta2")
        now = time.monotonic()
        if awaiting_request:
            deadline, what = self.opened_at + self.limits.request_timeout_s, "A-ASSOCIATE-RQ"
        else:
            deadline, what = now + self.limits.pdu_timeout_s, "PDU"
        deadline = min(deadline, self.opened_at + self.limits.max_association_s)
        header = self._receive(6, deadline)
        if header is None:
            self._give_up(asocket, what, awaiting_request)
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in range(0x01, 0x08):
            log.warning("unknown PDU type 0x%02X from %s: aborting", pdu_type, _peer(self))
            self.event_queue.put("Evt19")
            self._refused = True
            return None
        cap = self._cap(pdu_type, awaiting_request)
        if length > cap:
            log.warning(
                "PDU type 0x%02X from %s declares %d bytes, over the %d allowed: A-ABORT before reading it",
                pdu_type,
                _peer(self),
                length,
                cap,
            )
            self.event_queue.put("Evt19")
            self._refused = True
            return None
        if not awaiting_request:  # a large PDU on a slow link: allow for its size at the minimum rate
            deadline += length / self.limits.min_transfer_rate
            deadline = min(deadline, self.opened_at + self.limits.max_association_s)
        body = self._receive(length, deadline)
        if body is None:
            self._give_up(asocket, what, awaiting_request)
            return None
        return header, body

    def _queue_pdu(self, header: bytearray, body: bytearray) -> None:
        """Decode a PDU the pynetdicom way and queue its event; a malformed one is an invalid PDU."""
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as e:  # a peer's malformed PDU: invalid PDU (Evt19), never a dead thread
            log.warning("invalid PDU type 0x%02X from %s: %s", header[0], _peer(self), shown(e, 200))
            self.event_queue.put("Evt19")
            self._refused = True
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        pdu, event = super()._decode_pdu(bytestream)
        if isinstance(pdu, A_ASSOCIATE_RQ):
            pdu.to_primitive()  # what the state machine does next (AE-6); raises here, not there
        return pdu, event

    def _cap(self, pdu_type: int, awaiting_request: bool) -> int:
        if pdu_type == _A_ASSOCIATE_RQ:
            return self.limits.max_associate_rq_bytes
        if pdu_type == _P_DATA_TF and not awaiting_request:
            negotiated = int(self.assoc.acceptor.maximum_length or 0)
            return negotiated or self.limits.max_pdata_bytes
        return _SMALL_PDU

    def _receive(self, n: int, deadline: float) -> bytearray | None:
        """Exactly ``n`` bytes before ``deadline``, or None (timeout, closed connection)."""
        asocket = cast(AssociationSocket, self.socket)
        sock = asocket.socket
        if sock is None:
            return None
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        previous = sock.gettimeout()
        try:
            while got < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                count = sock.recv_into(view[got:], min(n - got, _READ_STEP))
                if count == 0:
                    return None
                got += count
        except (TimeoutError, OSError):
            return None
        finally:
            if asocket.socket is not None:
                sock.settimeout(previous)
        return buffer

    def _drain(self, asocket: AssociationSocket) -> None:
        """After our A-ABORT: discard what the peer still sends (a bounded amount), so that closing
        sends FIN, not a reset that could destroy the A-ABORT before the peer reads it."""
        sock = asocket.socket
        if sock is None:
            return
        try:
            sock.settimeout(1.0)
            count = len(sock.recv(min(65536, self._drain_left))) if self._drain_left > 0 else 0
        except OSError:
            count = 0
        self._drain_left -= count
        if count == 0:
            asocket.close()

    def _give_up(self, asocket: AssociationSocket, what: str, awaiting_request: bool) -> None:
        if asocket.socket is not None:
            bound = "association_request_timeout_s" if awaiting_request else "network_timeout_s"
            log.warning("closing connection from %s: no complete %s within %s", _peer(self), what, bound)
        asocket.close()  # Evt17: transport closed


class GuardedAssociation(Association):
    """An acceptor association whose DUL is a :class:`GuardedDUL` (and whose DIMSE provider sends
    Success C-STORE responses the lean way, :class:`~radloop.connector.dimse.store_response.LeanDIMSE`)."""

    def __init__(
        self, ae: ApplicationEntity, mode: str, limits: GuardLimits, store_handler: StoreHandler | None = None
    ) -> None:
        """``store_handler``: serve plain C-STOREs in the DUL thread (:mod:`.store_fast`)."""
        super().__init__(ae, mode)
        dul = GuardedDUL(self, limits)
        if store_handler is not None:
            dul.fast = StoreFastPath(self, store_handler, limits.max_instance_bytes)
        self.dul = dul
        self.dimse = LeanDIMSE(self)  # the Success C-STORE-RSP encoded directly (dimse/store_response)
        self.acse_timeout = limits.request_timeout_s  # the ARTIM timer of the new DUL
        self.network_timeout = self.ae.network_timeout

    def run_reactor(self) -> None:
        """pynetdicom's acceptor run, but the wait for the A-ASSOCIATE-RQ ends when the DUL gives up."""
        if not self.is_acceptor:
            super().run_reactor()
            return
        if not self._started_dul:
            self.dul.start()
            self._started_dul = True
            self._dul_ready.wait()
        primitive = self._wait_for_request()
        if primitive is not None:
            self.requestor.primitive = primitive
            evt.trigger(self, evt.EVT_REQUESTED, {})
            if not self.is_aborted and not self.is_rejected:
                self.acse.negotiate_association()
            if self.is_established:
                self._run_reactor()
        else:
            self.kill()  # after an A-ABORT (Sta13) the DUL closes as soon as the peer stops sending
        asocket = cast(AssociationSocket, self.dul.socket)
        if self._server is not None and asocket.socket is not None:
            self._server.shutdown_request(asocket.socket)

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's acceptor loop, waking when a DIMSE message arrives instead of polling.

        pynetdicom sleeps 1 ms before each look at its message queue: up to a millisecond per
        C-STORE, and on a loaded machine each of those wake-ups waits for a CPU. Here the loop
        blocks on the queue (at most ``_REACTOR_POLL_S``, then the same checks as pynetdicom:
        release, abort, DUL alive, idle timeout). The pause checkpoint that lets another thread
        send on the association (a Storage Commitment report) is kept as it is: the queue is
        read only after it is passed, so such a sender's response is never taken from it.
        """
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_REACTOR_POLL_S)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers (as pynetdicom)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.warning("association from %s: network timeout reached", _peer(self.dul))
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def _wait_for_request(self) -> A_ASSOCIATE | None:
        deadline = time.monotonic() + float(self.acse_timeout or 0)
        while time.monotonic() < deadline:
            primitive = self.dul.receive_pdu(wait=True, timeout=0.05)
            if isinstance(primitive, A_ASSOCIATE):
                return primitive
            asocket = cast(AssociationSocket, self.dul.socket)
            state = self.dul.state_machine.current_state
            if not self.dul.is_alive() or state == "Sta13" or (state == "Sta1" and asocket.socket is None):
                return None
        return None


def requested_associations(server: ThreadedAssociationServer) -> int:
    """Associations of ``server`` whose peer has sent an A-ASSOCIATE-RQ and that are still running."""
    return sum(1 for a in server.active_associations if a.requestor.primitive is not None and a.is_alive())


def _pending_connections(server: ThreadedAssociationServer) -> int:
    return sum(1 for a in server.active_associations if a.requestor.primitive is None and a.is_alive())


class GuardedRequestHandler(RequestHandler):
    """Creates :class:`GuardedAssociation` acceptors; sheds connections over the pending limit."""

    limits: GuardLimits = GuardLimits()
    store_handler: StoreHandler | None = None  # set: plain C-STOREs take the fast path (store_fast)

    def handle(self) -> None:
        server = cast(ThreadedAssociationServer, self.server)
        if _pending_connections(server) >= self.limits.max_pending_connections:
            log.warning(
                "closing connection from %s at once: %d connections already await their "
                "A-ASSOCIATE-RQ (max_pending_connections)",
                shown(self.client_address[0]),
                self.limits.max_pending_connections,
            )
            with contextlib.suppress(OSError):
                cast(socket.socket, self.request).shutdown(socket.SHUT_RDWR)
            return
        super().handle()

    def _create_association(self) -> Association:
        """As pynetdicom's ``RequestHandler._create_association``, with a guarded association."""
        assoc = GuardedAssociation(self.ae, "acceptor", self.limits, self.store_handler)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=cast(socket.socket, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = _copy_contexts(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Any, Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def _copy_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """Each association's own copy of the supported contexts, as pynetdicom's ``deepcopy`` but
    about 20 times faster (its deepcopy of ~170 storage contexts cost 0.3-0.7 s per association):
    the only mutable parts are the context's attributes and its list of transfer syntaxes."""
    copies = []
    for cx in contexts:
        twin = copy.copy(cx)
        twin._transfer_syntax = list(cx._transfer_syntax)
        copies.append(twin)
    return copies


class _ReusePortMixin(ThreadedAssociationServer):
    """Binds with ``SO_REUSEPORT``: several listener processes share one port (the kernel spreads
    new connections over them)."""

    def server_bind(self) -> None:
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_guarded_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    limits: GuardLimits,
    handlers: list[Any],
    *,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer,
    request_handler: type[GuardedRequestHandler] = GuardedRequestHandler,
    store_handler: StoreHandler | None = None,
) -> ThreadedAssociationServer:
    """Start a non-blocking association server whose connections are guarded (as ``AE.start_server``).

    ``reuse_port`` binds with ``SO_REUSEPORT`` (one of several listener processes on one port);
    ``ssl_context``, ``server_class`` and ``request_handler`` serve the DICOM TLS port
    (:mod:`radloop.connector.dimse.tls`). ``store_handler``: plain C-STORE requests are served in
    each connection's reader thread and answered by it (:mod:`radloop.connector.dimse.store_fast`);
    the ``EVT_C_STORE`` handler in ``handlers`` still serves any other C-STORE.
    """
    members = {"limits": limits, "store_handler": staticmethod(store_handler) if store_handler else None}
    handler_class = type(f"Bound{request_handler.__name__}", (request_handler,), members)
    if reuse_port:
        server_class = type(f"ReusePort{server_class.__name__}", (_ReusePortMixin, server_class), {})
    server = ae.make_server(
        address,
        evt_handlers=handlers,
        ssl_context=ssl_context,
        server_class=server_class,
        request_handler=handler_class,
    )
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer@radloop", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
