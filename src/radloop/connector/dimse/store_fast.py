"""C-STORE served in the thread that reads the connection, without pynetdicom's message round trip.

pynetdicom passes every received PDU from its DUL thread to the association thread: the PDU is
copied and decoded into objects, a state-machine event is queued, its P-DATA fragments are
assembled into a ``DIMSEMessage`` whose command set pydicom decodes, the message is queued to the
association thread, which triggers ``EVT_C_STORE`` and queues the response back to the DUL
thread to be encoded and sent. Per instance that is about a dozen thread hand-offs (each a wait
for the GIL or for a CPU) and as much CPU again as radloop's own checks and write.

:class:`StoreFastPath` serves a *plain* C-STORE-RQ in the DUL thread that read it (PS3.7 9.3.1,
PS3.8 Annex E): the PDVs are cut with ``struct``, the command set (always Implicit VR Little
Endian) is read by a walk over its elements, the data set fragments are kept as views of the PDU
bodies, the SCP's store handler is called, and a Success response goes straight to the socket
(:func:`~radloop.connector.dimse.store_response.success_store_pdv`). Plain means: the
whole command set in the first PDV of the message's first PDU, C-STORE-RQ with a data set, on an
accepted presentation context whose abstract syntax is the request's Affected SOP Class, UIDs in
ASCII, and pynetdicom between messages. Anything else (C-ECHO, N-ACTION, a C-STORE with an
unusual command set) is handed to pynetdicom as received, so its behaviour there is unchanged;
a non-Success response goes out through pynetdicom's DIMSE provider.

The fragments of a message must follow the standard: all on the command's presentation context,
data set fragments only, nothing after the last one. A peer that breaks that is answered with
an A-ABORT (pynetdicom would store the stray bytes or drop them silently). A data set larger
than the store's ``max_instance_bytes`` is no longer kept while it arrives (pynetdicom buffered it
whole); the request is then refused with the same status as any over-large instance.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE

from radloop.connector.dimse.store_response import success_store_pdv
from radloop.connector.peer_text import shown

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
_P_DATA_TF = 0x04
_PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
_MAX_COMMAND_BYTES = 64 << 10
_STATUS_HANDLER_FAILED = 0xC211  # pynetdicom's status for an exception in the EVT_C_STORE handler


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE-RQ and its data set, as the SCP's store handler gets it.

    ``data`` is the encoded data set as sent (the presentation context's transfer syntax), or
    None when it grew past ``max_bytes`` while it arrived and was dropped: ``size`` says how
    large it was."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: memoryview | None
    size: int


StoreHandler = Callable[["Association", StoreRequest], "int | Dataset"]
"""The SCP's C-STORE intervention: returns a status, or a status data set (Status, ErrorComment)."""


class Fed(enum.Enum):
    """What :meth:`StoreFastPath.feed` did with a P-DATA-TF PDU."""

    MORE = "more"  # part of a C-STORE the fast path serves; its next PDU follows
    DONE = "done"  # the last PDU of such a C-STORE: stored and answered
    PASS = "pass"  # not for the fast path: decode it through pynetdicom as usual
    INVALID = "invalid"  # breaks PS3.8 Annex E: the connection is aborted


class PduProblem(Exception):
    """A P-DATA-TF PDU that breaks the protocol; the message says how."""


@dataclass
class _Message:
    """The C-STORE being received: its command, and its data set fragments so far."""

    request: StoreRequest
    chunks: list[memoryview]
    size: int = 0
    dropped: bool = False


class StoreFastPath:
    """Serves plain C-STORE requests for one acceptor association (see the module docstring).

    Used by :class:`~radloop.connector.dimse.guard.GuardedDUL` only in state Sta6 (association
    established), from the DUL thread; it writes to the socket only from that thread, the one that
    also sends pynetdicom's queued PDUs, so PDUs never interleave."""

    def __init__(self, assoc: Association, handler: StoreHandler, max_bytes: int) -> None:
        self.assoc = assoc
        self.handler = handler
        self.max_bytes = max_bytes
        self._message: _Message | None = None

    def reset(self) -> None:
        """Drop a partly received message (the peer sent something else: release, abort)."""
        if self._message is not None:
            log.warning(
                "C-STORE of %s from %s ended after %d bytes of its data set: not stored",
                shown(self._message.request.sop_instance_uid),
                association_peer(self.assoc),
                self._message.size,
            )
        self._message = None

    def feed(self, body: bytearray) -> Fed:
        """Take one P-DATA-TF PDU's body (after its 6-byte header)."""
        try:
            pdvs = _pdvs(body)
        except PduProblem as e:
            if self._message is None and self._pynetdicom_idle():
                return Fed.PASS  # pynetdicom rejects it in its own words
            log.warning(
                "invalid P-DATA-TF from %s: %s; aborting the association", association_peer(self.assoc), e
            )
            self._message = None
            return Fed.INVALID
        start = 0
        if self._message is None:
            if not pdvs or not self._pynetdicom_idle():
                return Fed.PASS
            message = self._start(pdvs[0])
            if message is None:
                return Fed.PASS
            self._message, start = message, 1
        try:
            finished = self._collect(pdvs, start)
        except PduProblem as e:
            log.warning("C-STORE from %s: %s; aborting the association", association_peer(self.assoc), e)
            self._message = None
            return Fed.INVALID
        if not finished:
            return Fed.MORE
        message, self._message = self._message, None
        self._answer(message)
        return Fed.DONE

    def _pynetdicom_idle(self) -> bool:
        """pynetdicom holds no part of a message and no event waits in its queue."""
        return self.assoc.dimse.message is None and self.assoc.dul.event_queue.empty()

    def _start(self, pdv: tuple[int, int, memoryview]) -> _Message | None:
        """The message begun by this PDV, if it is a plain C-STORE-RQ (else None: pynetdicom's)."""
        context_id, control, data = pdv
        if control & 0x03 != 0x03:  # not a whole command set in one fragment
            return None
        command = _command_set(data)
        if command is None or _us(command, 0x0100) != _C_STORE_RQ:
            return None
        if _us(command, 0x0800) in (None, _NO_DATA_SET):
            return None
        message_id = _us(command, 0x0110)
        sop_class, sop_instance = _uid(command, 0x0002), _uid(command, 0x1000)
        context = self.assoc._accepted_cx.get(context_id)
        if message_id is None or not sop_class or not sop_instance or context is None:
            return None
        if context.abstract_syntax != sop_class or not context.transfer_syntax:
            return None
        request = StoreRequest(
            context_id=context_id,
            message_id=message_id,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=str(context.transfer_syntax[0]),
            data=None,
            size=0,
        )
        return _Message(request, [])

    def _collect(self, pdvs: list[tuple[int, int, memoryview]], start: int) -> bool:
        """Add data set fragments; True once the last one is in."""
        message = cast(_Message, self._message)
        context_id = message.request.context_id
        for index in range(start, len(pdvs)):
            pdv_context, control, data = pdvs[index]
            if control & 0x01:
                raise PduProblem("a command fragment inside the data set of a C-STORE-RQ")
            if pdv_context != context_id:
                raise PduProblem(
                    f"a data set fragment on presentation context {pdv_context}, the command on {context_id}"
                )
            message.size += len(data)
            if message.size > self.max_bytes:
                message.dropped, message.chunks = True, []
            elif len(data):
                message.chunks.append(data)
            if control & 0x02:
                if index != len(pdvs) - 1:
                    raise PduProblem("more fragments after the last fragment of a C-STORE-RQ's data set")
                return True
        return False

    def _answer(self, message: _Message) -> None:
        """Call the store handler and send its response."""
        data: memoryview | None = None
        if not message.dropped:
            chunks = message.chunks
            data = chunks[0] if len(chunks) == 1 else memoryview(b"".join(chunks))
        request = dataclasses.replace(message.request, data=data, size=message.size)
        try:
            result = self.handler(self.assoc, request)
        except Exception:  # the DICOM boundary, as pynetdicom does for EVT_C_STORE handlers
            log.exception("C-STORE handler failed for %s", shown(request.sop_instance_uid))
            result = _STATUS_HANDLER_FAILED
        if self.assoc.is_aborted:  # our side gave up on the association meanwhile
            return
        # not ``is_established``: pynetdicom sets it only after the A-ASSOCIATE-AC is sent and the
        # EVT_ACCEPTED handlers ran, and under load a peer's first C-STORE is served before that
        if result == 0 and self._send_success(request):
            return
        self.assoc.dimse.send_msg(_response(request, result), request.context_id)

    def _send_success(self, request: StoreRequest) -> bool:
        """Write the Success C-STORE-RSP to the socket; False if it must go through pynetdicom."""
        pdv = success_store_pdv(  # the UIDs are digits and dots (_uid): no UnicodeEncodeError
            request.sop_class_uid,
            request.message_id,
            request.sop_instance_uid,
            int(self.assoc.dimse.maximum_pdu_size or 0),
        )
        if pdv is None:
            return False
        item_length = len(pdv) + 1  # the presentation context ID, then the PDV's data
        pdu = struct.pack(">BxLLB", _P_DATA_TF, item_length + 4, item_length, request.context_id)
        socket = self.assoc.dul.socket
        if socket is not None:
            socket.send(pdu + pdv)  # a failed send queues Evt17
        return True


def _response(request: StoreRequest, result: int | Dataset) -> C_STORE:
    """The C-STORE-RSP primitive pynetdicom's storage service would build for ``result``."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = request.message_id
    rsp.AffectedSOPClassUID = request.sop_class_uid
    rsp.AffectedSOPInstanceUID = request.sop_instance_uid
    if isinstance(result, Dataset):
        rsp.Status = int(result.get("Status", _STATUS_HANDLER_FAILED))
        for keyword in ("ErrorComment", "OffendingElement"):
            if keyword in result:
                setattr(rsp, keyword, result.get(keyword))
    else:
        rsp.Status = int(result)
    return rsp


def _pdvs(body: bytearray) -> list[tuple[int, int, memoryview]]:
    """The PDVs of a P-DATA-TF body: (presentation context ID, message control header, data)."""
    view = memoryview(body)
    pdvs = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < _PDV_HEADER:
            raise PduProblem(f"{end - offset} bytes left, too few for a PDV item")
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or offset + 4 + length > end:
            raise PduProblem(f"a PDV item of length {length} with {end - offset - 4} bytes left")
        pdvs.append((body[offset + 4], body[offset + 5], view[offset + _PDV_HEADER : offset + 4 + length]))
        offset += 4 + length
    return pdvs


def _command_set(data: memoryview) -> dict[int, memoryview] | None:
    """The elements of an Implicit VR Little Endian command set (group 0000), or None if it is not
    well formed (pynetdicom then decodes it and says what is wrong)."""
    if len(data) > _MAX_COMMAND_BYTES:
        return None
    elements: dict[int, memoryview] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            return None
        elements[element] = data[offset : offset + length]
        offset += length
    return elements


def _us(command: dict[int, memoryview], element: int) -> int | None:
    value = command.get(element)
    if value is None or len(value) != 2:
        return None
    return int.from_bytes(value, "little")


def _uid(command: dict[int, memoryview], element: int) -> str | None:
    """A UI value without its padding, if it is only digits and dots (else None: pynetdicom's)."""
    value = command.get(element)
    if value is None:
        return None
    raw = bytes(value).rstrip(b"\x00 ")
    if not raw or not all(0x30 <= c <= 0x39 or c == 0x2E for c in raw):
        return None
    return raw.decode("ascii")


def association_peer(assoc: Any) -> str:
    """The peer's address of an association, fit for a log line."""
    info = assoc.requestor.address_info
    return shown(info.address if info is not None else "?")
