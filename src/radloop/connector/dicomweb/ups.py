"""The AI worklist: radloop's jobs as UPS workitems, for UPS-RS (PS3.18 §11) clients.

radloop plays the IHE AIW-I Task Manager. Every job is the performance of one workitem:

* a job routing created (a series arrived) gets a workitem of its own, made by :meth:`Worklist.tick`;
* a client creates a workitem naming a pipeline (ScheduledWorkitemCodeSequence, scheme
  ``99RADLOOP``) and a study (InputInformationSequence): the pipeline's jobs are queued for the
  study's matching series at once, in the same transaction; a workitem naming no loaded pipeline
  has no job and waits for an external performer.

The workitem's state follows its jobs (:func:`radloop.core.ups.state_of_jobs`) until someone
else claims it: a client that sets it IN PROGRESS with its own Transaction UID takes its queued
jobs away from radloop's workers (they become ``running``, leased by ``ups:<claimant>`` with no
expiry, so no worker and no lease sweeper touches them) and completes or cancels them itself.

Every state change is recorded as an event row (the database carries the truth); each
subscriber's WebSocket channel reads the rows after its cursor (:meth:`Worklist.events_for`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from sqlalchemy import update
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, select

from radloop.connector.routing import request_pipeline
from radloop.core import ups
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError
from radloop.core.models import (
    Instance,
    Job,
    JobState,
    Result,
    Series,
    SeriesState,
    Study,
    Workitem,
    WorkitemEvent,
    WorkitemJob,
    WorkitemSubscription,
    utcnow,
)
from radloop.core.settings import Settings
from radloop.core.uids import derived_uid, new_uid
from radloop.pipelines.catalog import PipelineCatalog

log = logging.getLogger(__name__)
State = ups.ProcedureStepState
RADLOOP = "radloop"
_SERVER_SET = ("SOPClassUID", "SOPInstanceUID", "ProcedureStepState", "TransactionUID")


@dataclass(frozen=True)
class Event:
    """One event report for a subscriber's channel, with its row id (the channel's cursor)."""

    id: int
    report: dict[str, object]


class Worklist:
    """UPS operations over the job queue (create, search, retrieve, update, claim, subscribe)."""

    def __init__(self, settings: Settings, engine: Engine, catalog: PipelineCatalog) -> None:
        self.settings = settings
        self.engine = engine
        self.catalog = catalog

    # ------------------------------------------------------------------ create, read, update

    def create(self, ds: Dataset, workitem_uid: str = "") -> str:
        """N-CREATE: a new SCHEDULED workitem (and its jobs, if it names a loaded pipeline); its UID."""
        uid = workitem_uid or str(ds.get("SOPInstanceUID", "")) or new_uid()
        _check_created(ds)
        code = ds.ScheduledWorkitemCodeSequence[0]
        pipeline = str(code.CodeValue)
        with session_scope(self.engine) as s:
            if s.exec(select(Workitem.id).where(Workitem.sop_instance_uid == uid)).first() is not None:
                raise ups.WorkitemStateConflictError(
                    f"workitem {uid} already exists", "The Workitem already exists."
                )
            for keyword in _SERVER_SET:
                if keyword in ds:
                    del ds[keyword]
            ds.setdefault("ScheduledProcedureStepPriority", "MEDIUM")
            ds.setdefault("InputReadinessState", "READY")
            row = Workitem(sop_instance_uid=uid, dataset=ds.to_json_dict())
            s.add(row)
            s.flush()
            if pipeline in self.catalog:
                jobs = self._queue_jobs(s, ds, pipeline, uid)
                for job in jobs:
                    s.add(WorkitemJob(workitem_id=row.id, job_id=job.id))  # type: ignore[arg-type]
                log.info("workitem %s: %d %s job(s) queued", uid, len(jobs), pipeline)
            else:
                log.info("workitem %s names no loaded pipeline (%s): for external performers", uid, pipeline)
            _record(s, uid, ups.STATE_REPORT, State.SCHEDULED)
        return uid

    def _queue_jobs(self, s: Session, ds: Dataset, pipeline: str, uid: str) -> list[Job]:
        priority = ups.job_priority(str(ds.get("ScheduledProcedureStepPriority", "")))
        not_before = ups.parse_datetime(str(ds.get("ScheduledProcedureStepStartDateTime", "")))
        jobs: list[Job] = []
        notes: list[str] = []
        for item in ds.InputInformationSequence:
            study_uid = str(item.get("StudyInstanceUID", ""))
            study = s.exec(select(Study).where(Study.study_instance_uid == study_uid)).first()
            if study is None:
                raise ups.InvalidWorkitemError(f"study {study_uid} is not in radloop (send or pull it first)")
            q = select(Series).where(Series.study_id == study.id, Series.state == SeriesState.complete)
            if item.get("SeriesInstanceUID"):
                q = q.where(Series.series_instance_uid == str(item.SeriesInstanceUID))
            for series in s.exec(q.order_by(col(Series.id))).all():
                got = request_pipeline(
                    s, series, self.settings, self.catalog, pipeline,
                    request_key=uid, priority=priority, not_before=not_before,
                )  # fmt: skip
                if isinstance(got, Job):
                    jobs.append(got)
                else:
                    notes.append(f"series {series.series_number or series.id}: {got}")
        if not jobs:
            why = "; ".join(notes) or "no complete series"
            raise ups.InvalidWorkitemError(f"{pipeline} has nothing to run on in the input studies ({why})")
        return jobs

    def retrieve(self, uid: str) -> Dataset:
        """N-GET: the workitem as a dataset (never its Transaction UID)."""
        with session_scope(self.engine) as s:
            return self._render(s, self._get(s, uid))

    def search(self, matches: Mapping[str, str], limit: int, offset: int) -> list[Dataset]:
        """C-FIND: workitems whose attributes match (``Keyword`` or ``Seq.Keyword`` = value, ``*`` and
        ``?`` wildcards), newest first; matched among the newest 5000 (of the state asked for)."""
        state = matches.get("ProcedureStepState") or matches.get("00741000")
        with session_scope(self.engine) as s:
            q = select(Workitem).order_by(col(Workitem.id).desc()).limit(_SEARCH_SCAN)
            if state and "*" not in state and "?" not in state:
                q = q.where(Workitem.procedure_step_state == state)
            found = [ds for ds in (self._render(s, w) for w in s.exec(q).all()) if _matches(ds, matches)]
        return found[offset : offset + limit]

    def update(self, uid: str, transaction_uid: str, ds: Dataset) -> None:
        """N-SET: replace top-level attributes of a SCHEDULED workitem, or an IN PROGRESS one by its owner."""
        with session_scope(self.engine) as s:
            row = self._get(s, uid)
            ups.check_update(State(row.procedure_step_state), row.transaction_uid, transaction_uid)
            current = Dataset.from_json(row.dataset)
            for elem in ds:
                if elem.keyword not in _SERVER_SET:
                    current[elem.tag] = elem
            row.dataset = current.to_json_dict()
            row.updated_at = utcnow()
            s.add(row)

    # ------------------------------------------------------------------ state

    def change_state(self, uid: str, target: State, transaction_uid: str, claimant: str) -> bool:
        """N-ACTION Change UPS State; True if it was already in ``target`` (a warning, not an error)."""
        with session_scope(self.engine) as s:
            row = self._get(s, uid)
            current = State(row.procedure_step_state)
            if ups.check_change(current, target, row.transaction_uid, transaction_uid):
                return True
            owner = f"ups:{uid}"
            if target == State.IN_PROGRESS:
                self._take_jobs(s, row, owner)
                row.transaction_uid, row.claimed_by = transaction_uid, claimant
            else:
                done = JobState.succeeded if target == State.COMPLETED else JobState.cancelled
                s.execute(
                    update(Job)
                    .where(col(Job.id).in_(self._job_ids(s, row)), col(Job.leased_by) == owner)
                    .values(state=done, finished_at=utcnow(), lease_until=None)
                )
            self._move(s, row, current, target)
        log.info("workitem %s: %s by %s", uid, target, claimant)
        return False

    def _take_jobs(self, s: Session, row: Workitem, owner: str) -> None:
        """Claim every job of the workitem for an external performer (none may have started)."""
        ids = self._job_ids(s, row)
        if not ids:
            return
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Job)
            .where(col(Job.id).in_(ids), col(Job.state) == JobState.queued)
            .values(state=JobState.running, leased_by=owner, lease_until=None, started_at=utcnow())
        )
        if res.rowcount != len(ids):  # a worker was quicker: the workitem is radloop's
            s.rollback()
            raise ups.WorkitemStateConflictError("radloop's workers already perform this workitem")

    def request_cancel(self, uid: str, reason: str) -> bool:
        """N-ACTION Request UPS Cancel; True if it was already CANCELED.

        radloop cancels its own jobs at once (a running one stops at its next operator); a workitem
        an external performer holds stays with it, which hears of the request on its channel.
        """
        with session_scope(self.engine) as s:
            row = self._get(s, uid)
            current = State(row.procedure_step_state)
            if current == State.CANCELED:
                return True
            if current == State.COMPLETED:
                raise ups.WorkitemStateConflictError("the workitem is already COMPLETED")
            row.cancel_requested_at = utcnow()
            extra = {"ReasonForCancellation": reason} if reason else {}
            _record(s, uid, ups.CANCEL_REQUESTED, current, **extra)
            if row.claimed_by not in ("", RADLOOP):
                s.add(row)
                return False
            s.execute(
                update(Job)
                .where(
                    col(Job.id).in_(self._job_ids(s, row)),
                    col(Job.state).in_([JobState.queued, JobState.running]),
                )
                .values(state=JobState.cancelled, finished_at=utcnow(), lease_until=None)
            )
            if current == State.SCHEDULED and not self._job_ids(s, row):
                self._move(s, row, current, State.CANCELED)
            else:
                s.add(row)
        return False

    def tick(self) -> int:
        """Give every new job a workitem and move workitems along with their jobs; events recorded."""
        changed = 0
        with session_scope(self.engine) as s:
            orphans = s.exec(
                select(Job)
                .outerjoin(WorkitemJob, col(WorkitemJob.job_id) == Job.id)
                .where(col(WorkitemJob.id).is_(None))
                .order_by(col(Job.id))
                .limit(200)
            ).all()
            for job in orphans:
                self._adopt(s, job)
                changed += 1
        with session_scope(self.engine) as s:
            open_rows = s.exec(
                select(Workitem).where(
                    col(Workitem.procedure_step_state).in_([State.SCHEDULED, State.IN_PROGRESS]),
                    col(Workitem.claimed_by).in_(["", RADLOOP]),
                )
            ).all()
            for row in open_rows:
                states = s.exec(
                    select(Job.state)
                    .join(WorkitemJob, col(WorkitemJob.job_id) == Job.id)
                    .where(WorkitemJob.workitem_id == row.id)
                ).all()
                if not states:
                    continue
                changed += self._follow_jobs(s, row, [JobState(x) for x in states])
        return changed

    def _follow_jobs(self, s: Session, row: Workitem, states: list[JobState]) -> int:
        """Move a workitem radloop performs along with its jobs; how many states it passed."""
        current = State(row.procedure_step_state)
        path = ups.path_to(current, ups.state_of_jobs(states))
        try:
            with s.begin_nested():
                for target in path:
                    row.claimed_by = RADLOOP
                    self._move(s, row, current, target)
                    current = target
        except ups.WorkitemStateConflictError:
            return 0  # a client claimed it meanwhile: the next tick sees its new owner
        return len(path)

    def _adopt(self, s: Session, job: Job) -> None:
        """The workitem a routed job performs (its UID derived from the job, so it is stable)."""
        uid = derived_uid("radloop-job-workitem", str(job.id))
        study = s.exec(select(Study).where(Study.study_instance_uid == job.study_instance_uid)).first()
        ds = Dataset()
        if study is not None:
            ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
            ds.AccessionNumber = study.accession_number
        ds.ProcedureStepLabel = f"{job.pipeline} {job.pipeline_version}".strip()
        ds.WorklistLabel = "radloop AI"
        ds.ScheduledProcedureStepPriority = ups.ups_priority(job.priority)
        ds.ScheduledProcedureStepStartDateTime = ups.dicom_datetime(job.created_at)
        ds.InputReadinessState = "READY"
        meaning = f"radloop pipeline {job.pipeline}"
        ds.ScheduledWorkitemCodeSequence = [ups.code_item(job.pipeline, ups.PIPELINE_CODING_SCHEME, meaning)]
        sops = s.exec(
            select(Instance.sop_class_uid, Instance.sop_instance_uid).where(
                Instance.series_id == job.series_id
            )
        ).all()
        refs = [(c, i) for c, i in sops]
        ds.InputInformationSequence = [_reference(job.study_instance_uid, job.series_instance_uid, refs)]
        row = Workitem(sop_instance_uid=uid, dataset=ds.to_json_dict())
        s.add(row)
        s.flush()
        s.add(WorkitemJob(workitem_id=row.id, job_id=job.id))  # type: ignore[arg-type]
        _record(s, uid, ups.STATE_REPORT, State.SCHEDULED)

    def _move(self, s: Session, row: Workitem, current: State, target: State) -> None:
        """One state change of a workitem, recorded as a State Report event."""
        res: CursorResult[object] = s.execute(  # type: ignore[assignment]
            update(Workitem)
            .where(col(Workitem.id) == row.id, col(Workitem.procedure_step_state) == current.value)
            .values(
                procedure_step_state=target.value,
                updated_at=utcnow(),
                transaction_uid=row.transaction_uid,
                claimed_by=row.claimed_by,
                cancel_requested_at=row.cancel_requested_at,
            )
        )
        if res.rowcount != 1:
            raise ups.WorkitemStateConflictError(f"the workitem changed state meanwhile (was {current})")
        row.procedure_step_state = target.value
        _record(s, row.sop_instance_uid, ups.STATE_REPORT, target)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, uid: str, ae_title: str, deletion_lock: bool) -> None:
        """Subscribe ``ae_title`` to a workitem's events, or to all (the global Worklist UID)."""
        with session_scope(self.engine) as s:
            if uid != ups.GLOBAL_SUBSCRIPTION_UID:
                self._get(s, uid)
            latest = s.exec(select(WorkitemEvent.id).order_by(col(WorkitemEvent.id).desc())).first() or 0
            sub = s.exec(
                select(WorkitemSubscription).where(
                    WorkitemSubscription.ae_title == ae_title, WorkitemSubscription.workitem_uid == uid
                )
            ).first()
            if sub is None:
                s.add(
                    WorkitemSubscription(
                        ae_title=ae_title, workitem_uid=uid, deletion_lock=deletion_lock, from_event_id=latest
                    )
                )
            if uid != ups.GLOBAL_SUBSCRIPTION_UID:  # PS3.4 CC.2.3.2: the current state, at once
                row = self._get(s, uid)
                _record(s, uid, ups.STATE_REPORT, State(row.procedure_step_state))

    def unsubscribe(self, uid: str, ae_title: str) -> None:
        """Remove a subscription; from the global one, every subscription of ``ae_title``."""
        with session_scope(self.engine) as s:
            q = select(WorkitemSubscription).where(WorkitemSubscription.ae_title == ae_title)
            if uid != ups.GLOBAL_SUBSCRIPTION_UID:
                q = q.where(WorkitemSubscription.workitem_uid == uid)
            subs = s.exec(q).all()
            if not subs:
                raise NotFoundError(f"{ae_title} has no subscription to {uid}")
            for sub in subs:
                s.delete(sub)

    def suspend(self, ae_title: str) -> None:
        """Suspend Global Subscription: no new workitems for ``ae_title``; those it has stay subscribed."""
        with session_scope(self.engine) as s:
            glob = s.exec(
                select(WorkitemSubscription).where(
                    WorkitemSubscription.ae_title == ae_title,
                    WorkitemSubscription.workitem_uid == ups.GLOBAL_SUBSCRIPTION_UID,
                )
            ).first()
            if glob is None:
                raise NotFoundError(f"{ae_title} has no global subscription")
            have = set(
                s.exec(
                    select(WorkitemSubscription.workitem_uid).where(WorkitemSubscription.ae_title == ae_title)
                )
            )
            for uid in s.exec(
                select(Workitem.sop_instance_uid).where(
                    col(Workitem.procedure_step_state).in_([State.SCHEDULED, State.IN_PROGRESS])
                )
            ).all():
                if uid not in have:
                    s.add(
                        WorkitemSubscription(
                            ae_title=ae_title, workitem_uid=uid, from_event_id=glob.from_event_id
                        )
                    )
            s.delete(glob)

    def events_for(self, ae_title: str, after_id: int, limit: int = 100) -> list[Event]:
        """The event reports ``ae_title`` is subscribed to, with row id above ``after_id``, oldest first."""
        with session_scope(self.engine) as s:
            subs = {
                x.workitem_uid: x.from_event_id
                for x in s.exec(select(WorkitemSubscription).where(WorkitemSubscription.ae_title == ae_title))
            }
            if not subs:
                return []
            start = max(after_id, min(subs.values()))
            rows = s.exec(
                select(WorkitemEvent)
                .where(col(WorkitemEvent.id) > start)
                .order_by(col(WorkitemEvent.id))
                .limit(limit)
            ).all()
        glob = subs.get(ups.GLOBAL_SUBSCRIPTION_UID)
        out = []
        for ev in rows:
            eid, since = int(ev.id or 0), subs.get(ev.workitem_uid)
            if (since is not None and eid > since) or (glob is not None and eid > glob):
                out.append(Event(eid, ev.report))
        if rows and not out:  # nothing for us in this page: still move the cursor past it
            out.append(Event(int(rows[-1].id or 0), {}))
        return out

    # ------------------------------------------------------------------ helpers

    def _get(self, s: Session, uid: str) -> Workitem:
        row = s.exec(select(Workitem).where(Workitem.sop_instance_uid == uid)).first()
        if row is None:
            raise NotFoundError(f"no workitem {uid}")
        return row

    def _job_ids(self, s: Session, row: Workitem) -> list[int]:
        return list(s.exec(select(WorkitemJob.job_id).where(WorkitemJob.workitem_id == row.id)).all())

    def _render(self, s: Session, row: Workitem) -> Dataset:
        """The workitem as clients see it: its dataset, state, and the results of its jobs."""
        ds = Dataset.from_json(row.dataset)
        ds.SOPClassUID = ups.UPS_PUSH_SOP_CLASS
        ds.SOPInstanceUID = row.sop_instance_uid
        ds.ProcedureStepState = row.procedure_step_state
        ds.ScheduledProcedureStepModificationDateTime = ups.dicom_datetime(row.updated_at)
        ids = self._job_ids(s, row)
        if ids and row.claimed_by in ("", RADLOOP):
            jobs = s.exec(select(Job).where(col(Job.id).in_(ids))).all()
            results = s.exec(select(Result).where(col(Result.job_id).in_(ids)).order_by(col(Result.id))).all()
            ds.UnifiedProcedureStepPerformedProcedureSequence = [_performed(list(jobs), list(results))]
        return ds


_SEARCH_SCAN = 5000


def _performed(jobs: Sequence[Job], results: Sequence[Result]) -> Dataset:
    """The performed procedure item of radloop's jobs: when they ran and what they wrote."""
    item = Dataset()
    item.PerformedWorkitemCodeSequence = [
        ups.code_item(j.pipeline, ups.PIPELINE_CODING_SCHEME, f"radloop pipeline {j.pipeline}")
        for j in jobs[:1]
    ]
    starts = [j.started_at for j in jobs if j.started_at]
    ends = [j.finished_at for j in jobs if j.finished_at]
    if starts:
        item.PerformedProcedureStepStartDateTime = ups.dicom_datetime(min(starts))
    if ends and len(ends) == len(jobs):
        item.PerformedProcedureStepEndDateTime = ups.dicom_datetime(max(ends))
    by_series: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in results:
        by_series.setdefault((r.study_instance_uid, r.series_instance_uid), []).append(
            (r.sop_class_uid, r.sop_instance_uid)
        )
    item.OutputInformationSequence = DicomSequence(
        [_reference(study, series, refs) for (study, series), refs in by_series.items()]
    )
    return item


def _reference(study_uid: str, series_uid: str, refs: Sequence[tuple[str, str]]) -> Dataset:
    """An item of the Referenced Instances and Access Macro (PS3.3 Table 10-3b)."""
    item = Dataset()
    item.TypeOfInstances = "DICOM"
    item.StudyInstanceUID, item.SeriesInstanceUID = study_uid, series_uid
    sops = []
    for sop_class, sop_instance in refs:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
        sops.append(ref)
    item.ReferencedSOPSequence = sops
    return item


def _check_created(ds: Dataset) -> None:
    """PS3.4 CC.2.5.1.3.1, as far as radloop needs it: what it must perform, on which study."""
    state = str(ds.get("ProcedureStepState", "SCHEDULED") or "SCHEDULED")
    if state != State.SCHEDULED:
        raise ups.InvalidWorkitemError(f"a new workitem must be SCHEDULED, not {state}")
    if "TransactionUID" in ds:
        raise ups.InvalidWorkitemError("a new workitem must not carry a Transaction UID")
    codes = ds.get("ScheduledWorkitemCodeSequence")
    if not codes or not codes[0].get("CodeValue"):
        raise ups.InvalidWorkitemError("ScheduledWorkitemCodeSequence (0040,4018) must name the pipeline")
    inputs = ds.get("InputInformationSequence")
    if not inputs or not all(item.get("StudyInstanceUID") for item in inputs):
        raise ups.InvalidWorkitemError("InputInformationSequence (0040,4021) must name the study")


def _matches(ds: Dataset, matches: Mapping[str, str]) -> bool:
    """Whether every match key (keyword, tag, or ``Seq.Keyword`` into any item) matches its value."""
    return all(_match_one(ds, key.split("."), value) for key, value in matches.items())


def _match_one(ds: Dataset, path: list[str], value: str) -> bool:
    tag = _tag(path[0])
    if tag is None or tag not in ds:
        return value in ("", "*")
    elem = ds[tag]
    if len(path) > 1:
        return elem.VR == "SQ" and any(_match_one(item, path[1:], value) for item in elem.value)
    if elem.VR == "SQ":
        return True  # sequence matching of a whole item is not supported: it matches
    got = "\\".join(str(v) for v in elem.value) if elem.VM > 1 else str(elem.value or "")
    return fnmatch.fnmatchcase(got, value) if value else True


def _tag(key: str) -> int | None:
    """A tag from a keyword or 8 hex digits; None if neither."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return int(Tag(int(key, 16)))
    found = tag_for_keyword(key)
    return int(found) if found is not None else None


def _record(s: Session, uid: str, event_type_id: int, state: State, **extra: str) -> None:
    report = ups.event_report(uid, event_type_id, state, **extra)
    s.add(WorkitemEvent(workitem_uid=uid, event_type_id=event_type_id, report=report.to_json_dict()))


def parse_state(value: str) -> State:
    """A Procedure Step State value; :class:`~radloop.core.ups.InvalidWorkitemError` if it is none."""
    try:
        return State(value.strip())
    except ValueError as e:
        raise ups.InvalidWorkitemError(f"{value!r} is not a Procedure Step State") from e


def transaction_uid_of(ds: Dataset) -> str:
    """The Transaction UID (0008,1195) of a request body, or ''."""
    return str(ds.get("TransactionUID", "") or "")
