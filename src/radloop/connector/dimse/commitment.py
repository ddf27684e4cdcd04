"""Storage Commitment Push Model SCP (PS3.4 Annex J): how a modality learns it may delete its copy.

A sender asks with an N-ACTION (Action Type 1, a Transaction UID and the Referenced SOP Sequence
of the instances it sent). The N-ACTION is answered at once (Success: the request is taken);
the result follows as an N-EVENT-REPORT once it is known:

* in ``dicom.durability: commit`` mode every referenced indexed file and its folders are
  fsynced first (:meth:`~radloop.connector.store.InstanceStore.make_durable`; whichever listener
  process wrote them); in ``fsync`` mode they already are;
* each referenced instance indexed with the same SOP Class goes into the success list
  (Referenced SOP Sequence); one not indexed fails with 0x0112 (no such object instance), one
  indexed under another SOP Class with 0x0119 (class/instance conflict), and all of them with
  0x0110 (processing failure) if an fsync failed;
* Event Type 1 when everything succeeded, 2 when the failure list is not empty.

The report goes back on the requesting association while it is open; when the requester has
released it (or its ``dicom.commitment_peers`` entry says ``always_new_association``), on a new
association to the requester's address from ``dicom.commitment_peers`` (role selection: we
propose the SCP role). A result that cannot be delivered either way is
logged as an error naming the transaction; the requester asks again (its copy is still there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from sqlmodel import col, select

from radloop.connector.peer_text import shown
from radloop.connector.store import InstanceStore
from radloop.core.models import Instance
from radloop.core.refs import is_valid_uid
from radloop.core.settings import CommitmentPeer, DicomSettings

log = logging.getLogger(__name__)

REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_SUCCEEDED, EVENT_FAILURES_EXIST = 1, 2  # N-EVENT-REPORT Event Type ID
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
MAX_REFERENCES = 100_000
_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_QUERY_CHUNK = 500


class StorageCommitmentSCP:
    """The N-ACTION handler and the reports it sends; bound on the StorageSCP's AE."""

    def __init__(self, dicom: DicomSettings, store: InstanceStore) -> None:
        self.dicom = dicom
        self.store = store
        self._lock = threading.Lock()
        # id(assoc) → the reports that wait for their N-ACTION-RSP to go out
        self._waiting: dict[int, list[threading.Event]] = {}

    @staticmethod
    def add_contexts(ae: AE) -> None:
        ae.add_supported_context(StorageCommitmentPushModel, _SYNTAXES)

    @staticmethod
    def handles(event: evt.Event) -> bool:
        """Whether an N-ACTION event is for Storage Commitment (else another service's, e.g. UPS)."""
        return bool(str(getattr(event.request, "RequestedSOPClassUID", "")) == StorageCommitmentPushModel)

    def on_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """Take the request (answered at once) and report its result from a thread of its own."""
        request = event.request
        called, calling = _titles(event.assoc)
        if int(getattr(request, "ActionTypeID", 0) or 0) != REQUEST_COMMITMENT:
            return NO_SUCH_ACTION, None
        try:
            info = event.action_information
            transaction = str(info.get("TransactionUID", "") or "").strip()
            refs = _references(info.get("ReferencedSOPSequence") or [])
        except Exception as e:  # the DICOM boundary: a request that cannot be decoded
            log.warning("Storage Commitment from '%s': unreadable request: %s", shown(calling), shown(e, 200))
            return INVALID_ARGUMENT_VALUE, None
        if not is_valid_uid(transaction) or not refs or len(refs) > MAX_REFERENCES:
            log.warning(
                "Storage Commitment from '%s' refused: Transaction UID %s, %d reference(s)",
                shown(calling),
                shown(transaction) or "missing",
                len(refs),
            )
            return INVALID_ARGUMENT_VALUE, None
        responded = threading.Event()
        with self._lock:
            self._waiting.setdefault(id(event.assoc), []).append(responded)
        threading.Thread(
            target=self._report,
            args=(event.assoc, responded, called, calling, transaction, refs),
            name="radloop-commitment",
            daemon=True,
        ).start()
        return 0x0000, None

    def on_dimse_sent(self, event: evt.Event) -> None:
        """Notification: an N-ACTION-RSP went out; the report that waits for it may follow."""
        if type(event.message).__name__ != "N_ACTION_RSP":
            return
        with self._lock:
            waiting = self._waiting.get(id(event.assoc))
            if not waiting:
                return
            responded = waiting.pop(0)
            if not waiting:
                del self._waiting[id(event.assoc)]
        responded.set()

    # -- the result ------------------------------------------------------------------------
    def result(self, transaction: str, refs: Sequence[tuple[str, str]]) -> tuple[int, Dataset]:
        """(Event Type ID, Event Information) for the referenced (SOP class, SOP instance) pairs."""
        indexed = self._indexed([uid for _cls, uid in refs])
        # fsynced by whichever process wrote them (several listener processes: not only this one)
        durable = self.store.make_durable([path for _cls, path in indexed.values()])
        succeeded, failed = [], []
        for sop_class, sop_uid in refs:
            known = indexed.get(sop_uid, (None, ""))[0]
            if known is None:
                failed.append((sop_class, sop_uid, NO_SUCH_OBJECT_INSTANCE))
            elif known != sop_class:
                failed.append((sop_class, sop_uid, CLASS_INSTANCE_CONFLICT))
            elif not durable:
                failed.append((sop_class, sop_uid, PROCESSING_FAILURE))
            else:
                succeeded.append((sop_class, sop_uid))
        info = Dataset()
        info.TransactionUID = transaction
        if succeeded:
            info.ReferencedSOPSequence = DicomSequence([_item(c, u) for c, u in succeeded])
        if failed:
            info.FailedSOPSequence = DicomSequence([_item(c, u, reason) for c, u, reason in failed])
        return (EVENT_FAILURES_EXIST if failed else EVENT_ALL_SUCCEEDED), info

    def _indexed(self, sop_uids: list[str]) -> dict[str, tuple[str, str]]:
        """SOP Instance UID → (SOP Class UID, path) of those indexed."""
        found: dict[str, tuple[str, str]] = {}
        with self.store.engine.connect() as conn:
            for start in range(0, len(sop_uids), _QUERY_CHUNK):
                chunk = sop_uids[start : start + _QUERY_CHUNK]
                rows = conn.execute(
                    select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.path).where(
                        col(Instance.sop_instance_uid).in_(chunk)
                    )
                )
                found.update((str(r[0]), (str(r[1]), str(r[2]))) for r in rows)
        return found

    def _report(
        self,
        assoc: Any,
        responded: threading.Event,
        called: str,
        calling: str,
        transaction: str,
        refs: list[tuple[str, str]],
    ) -> None:
        try:
            event_type, info = self.result(transaction, refs)
            failures = len(info.get("FailedSOPSequence") or [])
            summary = f"transaction {transaction}: {len(refs) - failures} committed, {failures} failed"
            # the N-ACTION-RSP first: then the reactor must have left the N-ACTION's service call
            # (pynetdicom signals DIMSE_SENT before the PDUs are queued)
            peer = self._peer(calling)
            if (
                not (peer is not None and peer.always_new_association)
                and responded.wait(self.dicom.commitment_timeout_s)
                and _reactor_idle(assoc, 2.0)
                and self._send_on(assoc, event_type, info)
            ):
                log.info(
                    "Storage Commitment for '%s' reported on its association, %s",
                    shown(calling),
                    summary,
                )
                return
            self._send_new_association(called, calling, event_type, info, summary)
        except Exception:  # a thread of its own: log, never raise
            who = shown(calling)
            log.exception("Storage Commitment for '%s', transaction %s: not reported", who, transaction)
        finally:
            with self._lock:
                waiting = self._waiting.get(id(assoc))
                if waiting and responded in waiting:
                    waiting.remove(responded)
                    if not waiting:
                        del self._waiting[id(assoc)]

    def _send_on(self, assoc: Any, event_type: int, info: Dataset) -> bool:
        if not assoc.is_established:
            return False
        try:
            status, _reply = assoc.send_n_event_report(
                info, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
            )
        except (RuntimeError, ValueError) as e:
            log.info("Storage Commitment: report on the requesting association failed (%s)", e)
            return False
        return int(getattr(status, "Status", -1)) == 0x0000 if status else False

    def _peer(self, calling: str) -> CommitmentPeer | None:
        return next((p for p in self.dicom.commitment_peers if p.ae_title == calling), None)

    def _send_new_association(
        self, called: str, calling: str, event_type: int, info: Dataset, summary: str
    ) -> None:
        peer = self._peer(calling)
        if peer is None:
            log.error(
                "Storage Commitment for '%s', %s: not reported: the association ended and "
                "dicom.commitment_peers has no address for '%s'",
                shown(calling),
                summary,
                shown(calling),
            )
            return
        ae = AE(ae_title=called or "RADLOOP")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.dicom.commitment_timeout_s
        ae.add_requested_context(StorageCommitmentPushModel, _SYNTAXES)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
        if not assoc.is_established:
            log.error(
                "Storage Commitment for '%s', %s: not reported: no association with %s:%d",
                shown(calling),
                summary,
                peer.host,
                peer.port,
            )
            return
        try:
            ok = self._send_on(assoc, event_type, info)
        finally:
            if assoc.is_established:
                assoc.release()
        if ok:
            log.info("Storage Commitment for '%s' reported on a new association, %s", shown(calling), summary)
        else:
            log.error("Storage Commitment for '%s', %s: the peer refused the report", shown(calling), summary)


def _references(items: Sequence[Dataset]) -> list[tuple[str, str]]:
    refs = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_uid = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_uid)):
            raise ValueError(f"a Referenced SOP Sequence item has no valid UIDs ({sop_class!r}, {sop_uid!r})")
        refs.append((sop_class, sop_uid))
    return refs


def _item(sop_class: str, sop_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def _reactor_idle(assoc: Any, timeout_s: float) -> bool:
    """Wait (bounded) until the acceptor's reactor is outside a service call (pynetdicom sets
    ``_is_paused`` for the length of one; a report sent before it ends could interleave PDUs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not assoc.is_established:
            return False
        if not assoc._is_paused:
            return True
        time.sleep(0.0002)
    return False


def _titles(assoc: Any) -> tuple[str, str]:
    primitive = assoc.requestor.primitive
    if primitive is None:
        return "", ""
    return str(primitive.called_ae_title).strip(), str(primitive.calling_ae_title).strip()
