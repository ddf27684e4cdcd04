"""The lean Success C-STORE-RSP (connector/dimse/store_response) is byte for byte pynetdicom's."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from radloop.connector.dimse.store_response import _lean_success, success_store_response


def _response(sop_class: str, message_id: int, sop_instance: str, status: int = 0) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode(message.command_set, True, True))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sop_class", "message_id", "sop_instance"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", 1, "1.2.3.4.5"),  # odd and even lengths: padding differs
        ("1.2.840.10008.5.1.4.1.1.4", 65535, "1.2.826.0.1.3680043.8.498.12345678901234567890123456"),
        ("1.2.840.10008.5.1.4.1.1.88.22", 7, "2.25.123456789012345678901234567890123456789"),
    ],
)
def test_success_response_bytes_match_pynetdicom(sop_class: str, message_id: int, sop_instance: str) -> None:
    rsp = _response(sop_class, message_id, sop_instance)
    fields = _lean_success(rsp)
    assert fields == (sop_class, message_id, sop_instance)
    assert success_store_response(*fields) == _pynetdicom_bytes(rsp)


def test_anything_but_plain_success_goes_through_pynetdicom() -> None:
    assert _lean_success(_response("1.2.3", 1, "1.2.4", status=0xA700)) is None
    with_comment = _response("1.2.3", 1, "1.2.4")
    setattr(with_comment, "ErrorComment", "note")  # noqa: B010 - typed as None in pynetdicom
    assert _lean_success(with_comment) is None
    request = C_STORE()
    request.MessageID = 1
    assert _lean_success(request) is None
