"""Unified Procedure Step (UPS) rules: workitem states, who may change them, and event reports.

The words are PS3.4 Annex CC's. A workitem is ``SCHEDULED``, ``IN PROGRESS`` (claimed by a
performer holding its Transaction UID), ``COMPLETED`` or ``CANCELED``; the last two are final.
Table CC.1.1-2 decides each requested change; PS3.18 §11.7.3 says how a refusal reads over HTTP
(the status and the ``Warning`` text), so each refusal here carries both.

radloop's jobs map onto these states (:func:`state_of_jobs`): ``queued`` → SCHEDULED,
``running`` → IN PROGRESS, ``succeeded`` → COMPLETED, ``failed``/``cancelled`` → CANCELED.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydicom import Dataset
from pydicom.valuerep import DT

from radloop.core.errors import RadloopError
from radloop.core.models import JobState, Priority

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
UPS_EVENT_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.4"
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"  # the Worklist: every workitem, present and future
FILTERED_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"
PIPELINE_CODING_SCHEME = "99RADLOOP"  # ScheduledWorkitemCodeSequence: CodeValue = a pipeline name

STATE_REPORT = 1  # Event Type IDs of UPS Event Reports (PS3.4 Table CC.2.4-1)
CANCEL_REQUESTED = 2


class ProcedureStepState(StrEnum):
    """Procedure Step State (0074,1000) of a UPS."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self in (ProcedureStepState.CANCELED, ProcedureStepState.COMPLETED)


class UpsError(RadloopError):
    """A UPS request refused; ``status`` is the HTTP status and ``warning`` the PS3.18 Warning text."""

    status = 400
    warning = ""

    def __init__(self, detail: str, warning: str = "") -> None:
        super().__init__(detail)
        if warning:
            self.warning = warning


class TransactionUidMissingError(UpsError):
    """A change to an IN PROGRESS workitem without the Transaction UID (DIMSE C301)."""

    warning = "The Transaction UID is missing."


class TransactionUidIncorrectError(UpsError):
    """A change to an IN PROGRESS workitem with a Transaction UID not its owner's (DIMSE C301)."""

    warning = "The Transaction UID is incorrect."


class WorkitemStateConflictError(UpsError):
    """A request the workitem's current state does not allow (DIMSE C300/C302/C303/C310)."""

    status = 409
    warning = "The submitted request is inconsistent with the state of the UPS Instance."


class InvalidWorkitemError(UpsError):
    """A workitem dataset or request that breaks the UPS rules (missing or forbidden attributes)."""


def check_change(
    current: ProcedureStepState, target: ProcedureStepState, owner_uid: str, given_uid: str
) -> bool:
    """Table CC.1.1-2 for a Change UPS State request; True if the workitem is already in ``target``.

    Claiming (→ IN PROGRESS) needs a SCHEDULED workitem and a new Transaction UID; completing or
    canceling an IN PROGRESS one needs its owner's Transaction UID.
    """
    if target == ProcedureStepState.SCHEDULED:
        raise InvalidWorkitemError("a workitem cannot be changed back to SCHEDULED")
    if not given_uid:
        raise TransactionUidMissingError("the request has no Transaction UID (0008,1195)")
    if target == ProcedureStepState.IN_PROGRESS:
        if current != ProcedureStepState.SCHEDULED:
            raise WorkitemStateConflictError(f"only a SCHEDULED workitem can be claimed; it is {current}")
        return False
    if current == target:
        return True
    if current != ProcedureStepState.IN_PROGRESS:
        raise WorkitemStateConflictError(f"a {current} workitem cannot become {target}")
    if given_uid != owner_uid:
        raise TransactionUidIncorrectError("the Transaction UID is not the one the workitem was claimed with")
    return False


def check_update(current: ProcedureStepState, owner_uid: str, given_uid: str) -> None:
    """PS3.4 CC.2.6: a SCHEDULED workitem may be updated by anyone, an IN PROGRESS one by its owner."""
    if current.final:
        raise InvalidWorkitemError(
            f"a {current} workitem can no longer be updated",
            "The submitted request is inconsistent with the current state of the Workitem.",
        )
    if current == ProcedureStepState.IN_PROGRESS:
        if not given_uid:
            raise TransactionUidMissingError("updating an IN PROGRESS workitem needs its Transaction UID")
        if given_uid != owner_uid:
            raise TransactionUidIncorrectError("the Transaction UID is not the workitem's")


_ORDER = [ProcedureStepState.SCHEDULED, ProcedureStepState.IN_PROGRESS]


def state_of_jobs(states: Iterable[JobState]) -> ProcedureStepState:
    """The UPS state of a workitem performed by radloop's jobs (at least one).

    Every job succeeded → COMPLETED; every job finished, some not succeeded → CANCELED; any job
    started (running, or finished while others wait) → IN PROGRESS; else SCHEDULED.
    """
    s = list(states)
    finished = [x for x in s if x in (JobState.succeeded, JobState.failed, JobState.cancelled)]
    if s and len(finished) == len(s):
        ok = all(x == JobState.succeeded for x in s)
        return ProcedureStepState.COMPLETED if ok else ProcedureStepState.CANCELED
    if JobState.running in s or finished:
        return ProcedureStepState.IN_PROGRESS
    return ProcedureStepState.SCHEDULED


def path_to(current: ProcedureStepState, derived: ProcedureStepState) -> list[ProcedureStepState]:
    """The states a workitem passes through from ``current`` towards ``derived``, in order.

    States only move forward (a job re-queued after a failed attempt leaves its workitem IN
    PROGRESS; a final state stays final), and a workitem that was never seen IN PROGRESS passes
    through it on its way to COMPLETED, as Table CC.1.1-2 requires.
    """
    if current.final or current == derived:
        return []
    if derived == ProcedureStepState.SCHEDULED:
        return []
    if derived == ProcedureStepState.IN_PROGRESS:
        return [derived]
    if derived == ProcedureStepState.COMPLETED and current == ProcedureStepState.SCHEDULED:
        return [ProcedureStepState.IN_PROGRESS, derived]
    return [derived]


def ups_priority(priority: Priority) -> str:
    """Scheduled Procedure Step Priority (0074,1200) of a job priority (UPS knows HIGH, MEDIUM, LOW)."""
    return {Priority.stat: "HIGH", Priority.high: "HIGH", Priority.normal: "MEDIUM"}.get(priority, "LOW")


def job_priority(ups: str) -> Priority:
    """The job priority for a Scheduled Procedure Step Priority (MEDIUM, or anything unknown, is normal)."""
    return {"HIGH": Priority.high, "LOW": Priority.low}.get(ups.strip().upper(), Priority.normal)


def dicom_datetime(value: datetime) -> str:
    """A DT value (UTC, with its offset) for a timestamp."""
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def parse_datetime(value: str) -> datetime | None:
    """A DT value as an aware datetime (UTC when it names no offset); None if empty or unreadable."""
    if not value:
        return None
    try:
        parsed: datetime = DT(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def dataset_from_json(payload: Any) -> Dataset:
    """One dataset from a DICOM JSON body (PS3.18 Annex F: an array of one dataset, or the object)."""
    if isinstance(payload, list):
        if len(payload) != 1:
            raise InvalidWorkitemError(f"the body holds {len(payload)} datasets; one workitem was expected")
        payload = payload[0]
    if not isinstance(payload, dict):
        raise InvalidWorkitemError("the body is not a DICOM JSON dataset")
    try:
        return Dataset.from_json(payload)
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidWorkitemError(f"the body is not valid DICOM JSON: {e}") from e


def event_report(workitem_uid: str, event_type_id: int, state: ProcedureStepState, **extra: str) -> Dataset:
    """A UPS Event Report (PS3.4 CC.2.4) as PS3.18 §11.13 sends it; MessageID is set when sent."""
    ds = Dataset()
    ds.AffectedSOPClassUID = UPS_EVENT_SOP_CLASS
    ds.AffectedSOPInstanceUID = workitem_uid
    ds.EventTypeID = event_type_id
    ds.ProcedureStepState = state.value
    if event_type_id == STATE_REPORT:
        ds.InputReadinessState = "READY"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds
