"""The UPS DIMSE services (PS3.4 Annex CC) over the same worklist UPS-RS serves.

N-CREATE (UPS Push), N-GET and N-ACTION Change UPS State (UPS Pull), N-ACTION Request Cancel,
Subscribe and Unsubscribe (UPS Watch) and C-FIND (UPS Pull / Query) on radloop's DICOM port, by
any listener AE title. Event reports go out over the UPS-RS WebSocket channel only (radloop sends
no N-EVENT-REPORT). Each handler is an intervention: it calls the worklist and returns a status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, UnifiedProcedurePresentationContexts, evt

from radloop.connector.dicomweb.ups import Worklist, parse_state, transaction_uid_of
from radloop.core import atna, ups
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError

log = logging.getLogger(__name__)

SUCCESS, PENDING = 0x0000, 0xFF00
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
NOT_A_UPS = 0xC307  # Specified SOP Instance UID does not exist or is not a UPS Instance managed by this SCP
WRONG_TRANSACTION_UID = 0xC301  # The correct Transaction UID was not provided
MAY_NO_LONGER_BE_UPDATED = 0xC300
ALREADY_CANCELED, ALREADY_COMPLETED = 0xB304, 0xB306  # warnings
CHANGE_STATE, REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 3, 4


class UpsHandlers:
    """pynetdicom event handlers over a :class:`~radloop.connector.dicomweb.ups.Worklist`."""

    def __init__(self, worklist: Worklist) -> None:
        self.worklist = worklist

    @staticmethod
    def add_contexts(ae: AE) -> None:
        """Accept the UPS Push, Pull, Watch, Event and Query SOP classes."""
        for cx in UnifiedProcedurePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        """The (event, handler) pairs to bind on the SCP."""
        return [
            (evt.EVT_N_CREATE, self.on_n_create),
            (evt.EVT_N_GET, self.on_n_get),
            (evt.EVT_N_ACTION, self.on_n_action),
            (evt.EVT_C_FIND, self.on_c_find),
        ]

    def on_n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-CREATE: a SCHEDULED workitem (its pipeline's jobs queued); the created attributes back."""
        ds = event.attribute_list
        uid = str(_request(event).AffectedSOPInstanceUID or "")
        try:
            uid = self.worklist.create(ds, uid)
        except ups.WorkitemStateConflictError:
            return DUPLICATE_SOP_INSTANCE, None
        except ups.UpsError as e:
            log.info("UPS N-CREATE refused: %s", e)
            return MISSING_ATTRIBUTE, None
        return SUCCESS, self.worklist.retrieve(uid)

    def on_n_get(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-GET: the workitem (all attributes; never its Transaction UID)."""
        try:
            return SUCCESS, self.worklist.retrieve(str(_request(event).RequestedSOPInstanceUID))
        except NotFoundError:
            return NOT_A_UPS, None

    def on_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """N-ACTION: change state (1), request cancel (2), subscribe (3), unsubscribe (4)."""
        uid = str(_request(event).RequestedSOPInstanceUID)
        info: Dataset = event.action_information or Dataset()
        action = int(event.action_type or 0)
        try:
            if action == CHANGE_STATE:
                target = parse_state(str(info.get("ProcedureStepState", "")))
                claimant = f"dimse:{event.assoc.requestor.ae_title}"
                if self.worklist.change_state(uid, target, transaction_uid_of(info), claimant):
                    return (
                        ALREADY_COMPLETED if target == ups.ProcedureStepState.COMPLETED else ALREADY_CANCELED
                    ), None
            elif action == REQUEST_CANCEL:
                reason = str(info.get("ReasonForCancellation", "") or "")
                if self.worklist.request_cancel(uid, reason):
                    return ALREADY_CANCELED, None
            elif action in (SUBSCRIBE, UNSUBSCRIBE):
                ae_title = str(info.get("ReceivingAE", "") or event.assoc.requestor.ae_title).strip()
                if action == SUBSCRIBE:
                    lock = str(info.get("DeletionLock", "FALSE")).upper() == "TRUE"
                    self.worklist.subscribe(uid, ae_title, lock)
                else:
                    self.worklist.unsubscribe(uid, ae_title)
            else:
                return NO_SUCH_ACTION, None
        except NotFoundError:
            return NOT_A_UPS, None
        except (ups.TransactionUidIncorrectError, ups.TransactionUidMissingError):
            return WRONG_TRANSACTION_UID, None
        except ups.WorkitemStateConflictError:
            return MAY_NO_LONGER_BE_UPDATED, None
        except ups.UpsError as e:
            log.info("UPS N-ACTION %d on %s refused: %s", action, uid, e)
            return PROCESSING_FAILURE, None
        return SUCCESS, None

    def _audit_query(self, event: evt.Event, matches: dict[str, str]) -> None:
        with session_scope(self.worklist.engine) as s:
            atna.record(s, self.worklist.settings.audit, _audit_query_message(event, matches))

    def on_c_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND: workitems matching the identifier's non-empty top-level values (``*``/``?`` wildcards)."""
        query: Dataset = event.identifier
        matches = {
            elem.keyword: str(elem.value)
            for elem in query
            if elem.keyword and elem.VR != "SQ" and elem.value not in (None, "", "*")
        }
        self._audit_query(event, matches)
        for ds in self.worklist.search(matches, limit=1000, offset=0):
            if event.is_cancelled:
                return
            answer = Dataset()
            for elem in query:
                if elem.tag in ds:
                    answer[elem.tag] = ds[elem.tag]
                else:
                    answer.add_new(elem.tag, elem.VR, None)
            yield PENDING, answer
        yield SUCCESS, None


def _audit_query_message(event: evt.Event, matches: dict[str, str]) -> atna.AuditMessage:
    """A Query audit message (PS3.15 A.5.3.12) for a C-FIND: the calling AE and its matching keys."""
    calling = str(event.assoc.requestor.ae_title).strip()
    address = str(event.assoc.requestor.address)
    text = "&".join(f"{k}={v}" for k, v in sorted(matches.items()))
    sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or atna.STUDY_ROOT_FIND)
    peer = atna.dicom_peer(calling, requestor=True, role=atna.ROLE_SOURCE, address=address)
    return atna.query(peer, text, sop_class)


def _request(event: evt.Event) -> Any:
    """The DIMSE request primitive of an event (its N-CREATE/N-GET/N-ACTION fields)."""
    return event.request
