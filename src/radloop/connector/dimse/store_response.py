"""The C-STORE-RSP Success message, encoded directly instead of through pynetdicom's DIMSE message.

pynetdicom turns every response primitive into a ``DIMSEMessage``: a pydicom command-set data set
whose ~15 elements are set, validated, pruned and then encoded element by element. For the one
message the C-STORE SCP sends per instance, that costs about as much CPU as the index
transaction did (a millisecond under the profiler). :class:`LeanDIMSE` encodes the Success
C-STORE-RSP (PS3.7 Table 9.3-2: the command group length, Affected SOP Class UID, Command Field
8001H, Message ID Being Responded To, Command Data Set Type 0101H (none), Status 0000H, Affected
SOP Instance UID, in Implicit VR Little Endian, PS3.7 §6.3.1) in a few ``struct.pack`` calls:
the same bytes pynetdicom writes (``tests/unit/test_store_response.py`` compares them). Any
other message, a non-Success status or a peer whose maximum PDU cannot hold it in one fragment
goes through pynetdicom unchanged.

``EVT_DIMSE_SENT`` is not triggered for these responses: it would need the message object this
module exists to avoid, and radloop's only subscriber (Storage Commitment, which waits for its
N-ACTION-RSP) ignores C-STORE responses.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_COMMAND_LAST_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_PDV_OVERHEAD = 6  # item length (4), context ID (1), control header (1)


def success_store_response(sop_class_uid: str, message_id: int, sop_instance_uid: str) -> bytes:
    """The encoded command set of a Success C-STORE-RSP (Implicit VR Little Endian)."""
    body = b"".join(
        (
            _uid(0x0002, sop_class_uid),
            _us(0x0100, _C_STORE_RSP),
            _us(0x0120, message_id),
            _us(0x0800, _NO_DATA_SET),
            _us(0x0900, 0x0000),
            _uid(0x1000, sop_instance_uid),
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def success_store_pdv(
    sop_class_uid: str, message_id: int, sop_instance_uid: str, max_pdu: int
) -> bytes | None:
    """The Success C-STORE-RSP as one PDV's data (message control header, then the command set),
    or None when a peer whose maximum PDU is ``max_pdu`` (0: no limit) cannot take it in one
    fragment. Raises ``UnicodeEncodeError`` for a UID that is not ASCII."""
    command = success_store_response(sop_class_uid, message_id, sop_instance_uid)
    if max_pdu and len(command) + _PDV_OVERHEAD > max_pdu:
        return None
    return _COMMAND_LAST_FRAGMENT + command


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def _uid(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _lean_success(primitive: Any) -> tuple[str, int, str] | None:
    """(SOP class, message ID, SOP instance) when ``primitive`` is a plain Success C-STORE-RSP."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status != 0x0000 or primitive.ErrorComment is not None:
        return None
    if primitive.OffendingElement is not None:
        return None
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if not sop_class or not sop_instance:
        return None
    return str(sop_class), int(primitive.MessageIDBeingRespondedTo), str(sop_instance)


class LeanDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending the Success C-STORE-RSP without a ``DIMSEMessage``."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        fields = _lean_success(primitive)
        if fields is not None:
            try:
                pdv = success_store_pdv(*fields, int(self.maximum_pdu_size or 0))
            except UnicodeEncodeError:  # not a valid UID: pynetdicom's own path says so
                pdv = None
            if pdv is not None:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, pdv))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)
