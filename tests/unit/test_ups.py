"""UPS state rules (PS3.4 Table CC.1.1-2) and how radloop's job states map onto them."""

from __future__ import annotations

import pytest

from radloop.core import ups
from radloop.core.models import JobState, Priority

S = ups.ProcedureStepState
Q, R, OK, F, C = JobState.queued, JobState.running, JobState.succeeded, JobState.failed, JobState.cancelled


@pytest.mark.parametrize(
    ("jobs", "state"),
    [
        ([Q], S.SCHEDULED),
        ([R], S.IN_PROGRESS),
        ([OK], S.COMPLETED),
        ([F], S.CANCELED),
        ([C], S.CANCELED),
        ([OK, Q], S.IN_PROGRESS),  # one series done, another waiting
        ([OK, F], S.CANCELED),
        ([OK, OK], S.COMPLETED),
    ],
)
def test_job_states_map_to_ups_states(jobs: list[JobState], state: ups.ProcedureStepState) -> None:
    assert ups.state_of_jobs(jobs) == state


def test_states_only_move_forward_and_pass_through_in_progress() -> None:
    assert ups.path_to(S.SCHEDULED, S.COMPLETED) == [S.IN_PROGRESS, S.COMPLETED]
    assert ups.path_to(S.SCHEDULED, S.CANCELED) == [S.CANCELED]
    assert ups.path_to(S.IN_PROGRESS, S.SCHEDULED) == []  # a re-queued retry stays IN PROGRESS
    assert ups.path_to(S.COMPLETED, S.IN_PROGRESS) == []  # final stays final


def test_claiming_needs_a_scheduled_workitem_and_a_transaction_uid() -> None:
    assert ups.check_change(S.SCHEDULED, S.IN_PROGRESS, "", "2.25.1") is False
    with pytest.raises(ups.TransactionUidMissingError) as missing:
        ups.check_change(S.SCHEDULED, S.IN_PROGRESS, "", "")
    assert missing.value.status == 400 and missing.value.warning == "The Transaction UID is missing."
    with pytest.raises(ups.WorkitemStateConflictError) as taken:
        ups.check_change(S.IN_PROGRESS, S.IN_PROGRESS, "2.25.1", "2.25.2")
    assert taken.value.status == 409


def test_only_the_owner_completes_or_cancels() -> None:
    assert ups.check_change(S.IN_PROGRESS, S.COMPLETED, "2.25.1", "2.25.1") is False
    with pytest.raises(ups.TransactionUidIncorrectError) as wrong:
        ups.check_change(S.IN_PROGRESS, S.CANCELED, "2.25.1", "2.25.2")
    assert wrong.value.status == 400 and wrong.value.warning == "The Transaction UID is incorrect."
    with pytest.raises(ups.WorkitemStateConflictError):
        ups.check_change(S.SCHEDULED, S.COMPLETED, "", "2.25.1")  # never claimed
    assert ups.check_change(S.COMPLETED, S.COMPLETED, "2.25.1", "2.25.1") is True  # already: a warning
    with pytest.raises(ups.WorkitemStateConflictError):
        ups.check_change(S.CANCELED, S.COMPLETED, "2.25.1", "2.25.1")


def test_updates_follow_the_state() -> None:
    ups.check_update(S.SCHEDULED, "", "")
    ups.check_update(S.IN_PROGRESS, "2.25.1", "2.25.1")
    with pytest.raises(ups.TransactionUidIncorrectError):
        ups.check_update(S.IN_PROGRESS, "2.25.1", "2.25.9")
    with pytest.raises(ups.InvalidWorkitemError):
        ups.check_update(S.COMPLETED, "2.25.1", "2.25.1")


def test_priorities_and_event_reports() -> None:
    assert [ups.ups_priority(p) for p in Priority] == ["HIGH", "HIGH", "MEDIUM", "LOW"]
    assert ups.job_priority("LOW") == Priority.low and ups.job_priority("MEDIUM") == Priority.normal
    report = ups.event_report("2.25.7", ups.STATE_REPORT, S.IN_PROGRESS).to_json_dict()
    assert report["00000002"]["Value"] == [ups.UPS_EVENT_SOP_CLASS]
    assert report["00001002"]["Value"] == [1] and report["00741000"]["Value"] == ["IN PROGRESS"]
    assert ups.parse_datetime("20261206120000") is not None and ups.parse_datetime("junk") is None
    with pytest.raises(ups.InvalidWorkitemError):
        ups.dataset_from_json([{}, {}])
