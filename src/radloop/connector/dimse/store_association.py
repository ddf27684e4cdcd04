"""One C-STORE SCU association over a blocking socket: the wire level of ``radloop send``.

Why not pynetdicom's ``Association.send_c_store``: it decodes and re-encodes every data set,
moves each PDU through two polling threads (1 ms sleeps) and pauses its reactor per message with
a check that can race: the reactor may take the C-STORE response off the queue itself, and the
sender then waits out the DIMSE timeout ("no response"), which happened about once in 4,000
instances into ``storescp --fork`` on the development VM (pynetdicom issue #435 reports the same
race). A storage SCU needs none of that machinery: it sends a request, waits for one response,
and the peer sends nothing else. So this class speaks the upper layer protocol (PS3.8 §9) itself,
in the calling thread: pynetdicom's PDU classes encode the A-ASSOCIATE-RQ and decode the answer;
each C-STORE-RQ goes as P-DATA-TF PDUs cut to the peer's maximum length, the data set being the
file's own bytes after its File Meta Information (never decoded when the peer accepted the
file's transfer syntax); the response is read with a blocking ``recv`` under ``timeout_s``.

One operation is outstanding at a time (the default Asynchronous Operations Window, PS3.7 D.3.3.3).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation

from radloop.core.errors import DeliveryError

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU_RECEIVED = 1 << 20
"""What we advertise: responses are a few hundred bytes, any size is fine."""
MIN_PEER_PDU = 256
"""A smaller maximum PDU length from a peer is refused (a PDV needs 6 bytes of header; DCMTK's
own minimum is 4096)."""
SEND_BUFFER = 1 << 20
"""PDUs are joined into writes of about this size (fewer system calls, bounded memory)."""
_IOV_MAX = 1024
_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")
_P_DATA_TF, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ = 0x04, 0x02, 0x03
_A_RELEASE_RQ, _A_RELEASE_RP, _A_ABORT = 0x05, 0x06, 0x07
_C_STORE_RQ, _PRIORITY_MEDIUM, _DATA_SET_PRESENT = 0x0001, 0x0000, 0x0000


class AssociationLost(DeliveryError):
    """The peer aborted, closed the connection or did not answer within the timeout."""


class NoResponse(AssociationLost):
    """The peer did not answer within the timeout (the association is aborted)."""


@dataclass(frozen=True)
class StoreStatus:
    """A C-STORE response: its Status and, where the peer gave one, its Error Comment."""

    status: int
    error_comment: str = ""


class StoreAssociation:
    """An established association that sends C-STORE requests one at a time.

    ``contexts``: (abstract syntax, transfer syntaxes) pairs, proposed in that order with odd ids.
    Raises :class:`DeliveryError` when the peer cannot be reached, rejects or aborts the request.
    Use as a context manager: leaving it releases the association (aborts it after an error).
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: list[tuple[str, list[str]]],
        *,
        timeout_s: float,
        tls_args: tuple[ssl.SSLContext, str] | None = None,
    ) -> None:
        self.peer = f"{called_ae}@{host}:{port}"
        self._message_id = 0
        over = "DICOM TLS: " if tls_args else ""
        self._sock = _connect(host, port, timeout_s, tls_args, f"no association with {self.peer} ({over}")
        try:
            self._max_pdu, self.accepted = self._negotiate(called_ae, calling_ae, contexts)
        except (
            OSError,
            DeliveryError,
        ) as e:  # OSError: a TLS 1.3 peer closing after checking our certificate
            self._sock.close()
            raise DeliveryError(f"no association with {self.peer} ({over}{e})") from e
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> StoreAssociation:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.release()
        else:
            self.abort()

    def context_for(self, sop_class: str, transfer_syntax: str) -> int | None:
        """The id of an accepted presentation context for this SOP class and transfer syntax."""
        return self.accepted.get((sop_class, transfer_syntax))

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        """The transfer syntaxes accepted for ``sop_class``, in the order proposed."""
        return [ts for (sop, ts) in self.accepted if sop == sop_class]

    def c_store(
        self, context_id: int, sop_class: str, sop_instance: str, data_set: memoryview
    ) -> StoreStatus:
        """Send one C-STORE-RQ whose data set is ``data_set`` (already in the context's transfer
        syntax) and wait for its response. Raises :class:`AssociationLost`."""
        self._message_id = self._message_id % 0xFFFF + 1
        command = _c_store_rq(self._message_id, sop_class, sop_instance)
        self._send_pdvs(context_id, command, data_set)
        return self._read_response(self._message_id)

    def release(self) -> None:
        """A-RELEASE: ask, wait for the answer (or the timeout), close."""
        try:
            self._sock.sendall(_PDU_HEADER.pack(_A_RELEASE_RQ, 0, 4) + bytes(4))
            while True:
                kind, _ = self._read_pdu()
                if kind in (_A_RELEASE_RP, _A_ABORT):
                    break
        except (OSError, DeliveryError) as e:
            log.debug("release of %s: %s", self.peer, e)
        finally:
            self._sock.close()

    def abort(self) -> None:
        """A-ABORT (service user) and close; never raises."""
        try:
            self._sock.sendall(_PDU_HEADER.pack(_A_ABORT, 0, 4) + bytes(4))
        except OSError:
            pass
        finally:
            self._sock.close()

    def _negotiate(
        self, called_ae: str, calling_ae: str, contexts: list[tuple[str, list[str]]]
    ) -> tuple[int, dict[tuple[str, str], int]]:
        request = A_ASSOCIATE()
        request.application_context_name = UID(APPLICATION_CONTEXT)
        request.calling_ae_title = calling_ae
        request.called_ae_title = called_ae
        local, remote = self._sock.getsockname(), self._sock.getpeername()
        request.calling_presentation_address = AddressInformation(local[0], local[1])
        request.called_presentation_address = AddressInformation(remote[0], remote[1])
        proposed: dict[int, str] = {}
        for index, (sop_class, syntaxes) in enumerate(contexts):
            context = PresentationContext()
            context.context_id = 2 * index + 1
            context.abstract_syntax = UID(sop_class)
            context.transfer_syntax = [UID(ts) for ts in syntaxes]
            request.presentation_context_definition_list.append(context)
            proposed[2 * index + 1] = sop_class
        length = MaximumLengthNotification()
        length.maximum_length_received = MAX_PDU_RECEIVED
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        request.user_information = [length, implementation, version]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(request)
        self._sock.sendall(pdu.encode())
        kind, body = self._read_pdu()
        if kind == _A_ASSOCIATE_RJ:
            reject = A_ASSOCIATE_RJ()
            reject.decode(_PDU_HEADER.pack(kind, 0, len(body)) + body)
            answer = reject.to_primitive()
            raise DeliveryError(f"rejected: {answer.reason_str}")
        if kind != _A_ASSOCIATE_AC:
            raise DeliveryError(f"answered with PDU type 0x{kind:02X}")
        accept = A_ASSOCIATE_AC()
        accept.decode(_PDU_HEADER.pack(kind, 0, len(body)) + body)
        answer = accept.to_primitive()
        accepted = {
            (proposed[c.context_id], str(c.transfer_syntax[0])): c.context_id
            for c in answer.presentation_context_definition_results_list
            if c.result == 0 and c.context_id in proposed and c.transfer_syntax
        }
        max_pdu = int(answer.maximum_length_received or 0)
        if 0 < max_pdu < MIN_PEER_PDU:
            raise DeliveryError(f"the peer's maximum PDU length {max_pdu} is below {MIN_PEER_PDU} bytes")
        return max_pdu, accepted

    def _send_pdvs(self, context_id: int, command: bytes, data_set: memoryview) -> None:
        """The command, then the data set, in PDVs that fit the peer's maximum PDU length
        (0: unlimited), joined into writes of about :data:`SEND_BUFFER`."""
        pieces: list[bytes | memoryview] = []
        size = 0
        try:
            for control, chunk in (
                *self._fragments(memoryview(command), 0x01, 0x03),
                *self._fragments(data_set, 0x00, 0x02),
            ):
                pieces += [_pdu_header(context_id, control, len(chunk)), chunk]
                size += len(chunk) + 12
                if size >= SEND_BUFFER:
                    self._send_all(pieces)
                    pieces, size = [], 0
            self._send_all(pieces)
        except OSError as e:
            raise AssociationLost(f"{self.peer}: sending failed: {e}") from e

    def _send_all(self, pieces: list[bytes | memoryview]) -> None:
        """Gathered writes straight from the file's buffer (``sendmsg``); joined for TLS."""
        if isinstance(self._sock, ssl.SSLSocket):
            self._sock.sendall(b"".join(pieces))
            return
        views, first = [memoryview(p) for p in pieces], 0
        while first < len(views):
            sent = self._sock.sendmsg(views[first : first + _IOV_MAX])
            while first < len(views) and sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            if sent:
                views[first] = views[first][sent:]

    def _fragments(self, data: memoryview, more: int, last: int) -> list[tuple[int, memoryview]]:
        """``data`` cut to the peer's maximum PDV length, each with its message control header."""
        size = self._max_pdu - 6 if self._max_pdu else max(len(data), 1)
        starts = range(0, max(len(data), 1), size)
        return [(last if i == len(starts) - 1 else more, data[at : at + size]) for i, at in enumerate(starts)]

    def _read_response(self, message_id: int) -> StoreStatus:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            if kind == _A_ABORT:
                raise AssociationLost(f"{self.peer} aborted the association")
            if kind != _P_DATA_TF:
                raise AssociationLost(f"{self.peer} sent PDU type 0x{kind:02X} instead of a C-STORE response")
            view, at = memoryview(body), 0
            while at < len(view):
                (length,) = struct.unpack_from(">L", view, at)
                header = view[at + 5]
                if header & 0x01:  # a command fragment (a response has no data set)
                    command += view[at + 6 : at + 4 + length]
                    if header & 0x02:
                        return _store_status(bytes(command), message_id, self.peer)
                at += 4 + length

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._recv_exactly(6)
        kind, _, length = _PDU_HEADER.unpack(header)
        if length > max(MAX_PDU_RECEIVED, 1 << 16) + 6 and kind == _P_DATA_TF:
            raise AssociationLost(
                f"{self.peer} sent a {length}-byte PDU, over the {MAX_PDU_RECEIVED} advertised"
            )
        return kind, self._recv_exactly(length)

    def _recv_exactly(self, count: int) -> bytes:
        buffer = bytearray(count)
        view, got = memoryview(buffer), 0
        try:
            while got < count:
                n = self._sock.recv_into(view[got:], count - got)
                if n == 0:
                    raise AssociationLost(f"{self.peer} closed the connection")
                got += n
        except TimeoutError as e:
            raise NoResponse(f"no response from {self.peer} (timeout)") from e
        except OSError as e:
            raise AssociationLost(f"{self.peer}: {e}") from e
        return bytes(buffer)


def _connect(
    host: str, port: int, timeout_s: float, tls_args: tuple[ssl.SSLContext, str] | None, failed: str
) -> socket.socket:
    """``failed``: how a :class:`DeliveryError` begins (its parenthesis is closed here)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise DeliveryError(f"{failed}unreachable: {e})") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls_args is None:
        return sock
    context, server_name = tls_args
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except (OSError, ssl.SSLError) as e:
        sock.close()
        raise DeliveryError(f"{failed}handshake failed: {e})") from e


def _pdu_header(context_id: int, control: int, length: int) -> bytes:
    """P-DATA-TF header with one PDV item of ``length`` data bytes."""
    return _PDU_HEADER.pack(_P_DATA_TF, 0, length + 6) + _PDV_HEADER.pack(length + 2, context_id, control)


def _pdu(context_id: int, control: int, data: bytes) -> bytes:
    return _pdu_header(context_id, control, len(data)) + data


def _element(tag: int, value: bytes) -> bytes:
    """An Implicit VR Little Endian command element (group 0000)."""
    return struct.pack("<HHL", 0x0000, tag, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 §9.3.1.1), Implicit VR Little Endian."""
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class)),
            _element(0x0100, struct.pack("<H", _C_STORE_RQ)),
            _element(0x0110, struct.pack("<H", message_id)),
            _element(0x0700, struct.pack("<H", _PRIORITY_MEDIUM)),
            _element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
            _element(0x1000, _uid(sop_instance)),
        )
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _command_elements(command: bytes) -> dict[int, bytes]:
    """A command set's elements (Implicit VR Little Endian, group 0000) by element number."""
    elements, at = {}, 0
    while at + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, at)
        if group != 0x0000 or at + 8 + length > len(command):
            raise ValueError(
                f"element ({group:04X},{element:04X}) of {length} bytes does not fit the command"
            )
        elements[element] = command[at + 8 : at + 8 + length]
        at += 8 + length
    return elements


def _store_status(command: bytes, message_id: int, peer: str) -> StoreStatus:
    """Status (0000,0900) and Error Comment (0000,0902) of a C-STORE-RSP (PS3.7 §9.3.1.2),
    checked to answer ``message_id``; read with struct (a command set is a flat list of
    short elements), not pydicom."""
    try:
        elements = _command_elements(command)
        (field,) = struct.unpack("<H", elements[0x0100])
        (responded_to,) = struct.unpack("<H", elements[0x0120])
        (status,) = struct.unpack("<H", elements[0x0900])
    except (KeyError, ValueError, struct.error) as e:
        raise AssociationLost(f"{peer} sent a malformed C-STORE response: {e}") from e
    if field != 0x8001 or responded_to != message_id:
        raise AssociationLost(
            f"{peer} answered message {responded_to} (command 0x{field:04X}), "
            f"expected a C-STORE-RSP to {message_id}"
        )
    comment = elements.get(0x0902, b"").rstrip(b"\0 ").decode("ascii", "replace")
    return StoreStatus(status, comment)
