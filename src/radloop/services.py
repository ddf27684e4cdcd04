"""Service functions shared by the CLI and the HTTP API: queries and user actions on studies,
jobs, deliveries, pipelines, API tokens and pulls. They take an engine (or the part they act
through), return read models (:mod:`radloop.core.read_models`), and raise radloop errors."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from pydicom import Dataset
from sqlalchemy import ColumnElement, Integer
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from radloop.connector.dicomweb.ups import Event, Worklist, parse_state, transaction_uid_of
from radloop.connector.pull.puller import Puller
from radloop.core import atna, tokens
from radloop.core import jobs as job_states
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError, NotFoundError, RadloopError
from radloop.core.models import (
    ApiToken,
    AuditMessage,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    JobStep,
    PollCursor,
    Priority,
    PulledStudy,
    PullState,
    Result,
    Series,
    Study,
    utcnow,
)
from radloop.core.read_models import (
    AlertOut,
    AuditMessageOut,
    BucketOut,
    CursorOut,
    DeliveryOut,
    DeliveryPage,
    DestinationStatusOut,
    GraphNodeOut,
    Health,
    JobDetail,
    JobOut,
    JobPage,
    JobStepOut,
    ModelOut,
    OperatorOut,
    OverviewOut,
    PipelineFileOut,
    PipelineOut,
    PollOut,
    PullOut,
    ResultOut,
    ReviewOut,
    SeriesDetail,
    SeriesOut,
    SourceOut,
    StudyDetail,
    StudyOut,
    StudyPage,
    TokenCreated,
    TokenOut,
    WorklistItemOut,
)
from radloop.core.roles import DEFAULT_TOKEN_ROLES
from radloop.core.settings import DicomwebSource, Settings
from radloop.core.settings.inference import TritonBackendSettings
from radloop.core.ups import ProcedureStepState
from radloop.feedback import decisions
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.spec import Pipeline

if TYPE_CHECKING:
    from radloop.inference.model_spec import ModelSpec

T = TypeVar("T", bound=SQLModel)


def _get(s: Session, model: type[T], row_id: int) -> T:
    """The row of ``model`` with id ``row_id``; :class:`NotFoundError` naming it if there is none."""
    row = s.get(model, row_id)
    if row is None:
        raise NotFoundError(f"no {model.__name__.lower()} {row_id}")
    return row


def _series_of(s: Session, st: Study) -> list[SeriesOut]:
    """The series of a study, oldest first."""
    rows = s.exec(select(Series).where(Series.study_id == st.id).order_by(col(Series.id))).all()
    return [_series_out(x, st.study_instance_uid) for x in rows]


def _series_out(se: Series, study_instance_uid: str) -> SeriesOut:
    return SeriesOut.model_validate(se, update={"study_instance_uid": study_instance_uid})


def _jobs_where(s: Session, *where: ColumnElement[bool]) -> list[JobOut]:
    """Jobs matching ``where``, oldest first."""
    return [JobOut.model_validate(j) for j in s.exec(select(Job).where(*where).order_by(col(Job.id))).all()]


def _delivery_out(d: Delivery, r: Result) -> DeliveryOut:
    return DeliveryOut.model_validate(
        d, update={"kind": r.kind, "sop_instance_uid": r.sop_instance_uid, "job_id": r.job_id}
    )


def list_studies(engine: Engine, limit: int = 100) -> list[StudyOut]:
    """Studies, newest first, each with its series (state, instance count, routing note)."""
    with session_scope(engine) as s:
        studies = s.exec(select(Study).order_by(col(Study.id).desc()).limit(limit)).all()
        return [StudyOut.model_validate(st, update={"series": _series_of(s, st)}) for st in studies]


def list_jobs(
    engine: Engine,
    state: str | None = None,
    pipeline: str | None = None,
    limit: int = 100,
    *,
    priority: str | None = None,
    offset: int = 0,
) -> list[JobOut]:
    """Jobs, newest first, optionally filtered by state, pipeline and priority."""
    with session_scope(engine) as s:
        q = select(Job).where(*_job_filters(state, pipeline, priority))
        q = q.order_by(col(Job.id).desc()).offset(offset).limit(limit)
        return [JobOut.model_validate(j) for j in s.exec(q).all()]


def _job_filters(state: str | None, pipeline: str | None, priority: str | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if state:
        where.append(col(Job.state) == JobState(state))
    if pipeline:
        where.append(col(Job.pipeline) == pipeline)
    if priority:
        where.append(col(Job.priority) == Priority(priority))
    return where


def page_jobs(
    engine: Engine,
    state: str | None = None,
    pipeline: str | None = None,
    priority: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    """One page of :func:`list_jobs` and the number of jobs the filters match."""
    items = list_jobs(engine, state, pipeline, limit, priority=priority, offset=offset)
    with session_scope(engine) as s:
        where = _job_filters(state, pipeline, priority)
        total = s.exec(select(func.count()).select_from(Job).where(*where)).one()
    return JobPage(items=items, total=int(total), offset=offset, limit=limit)


def get_job(engine: Engine, job_id: int) -> JobDetail:
    """One job with its operator steps (timings, logs) and results."""
    with session_scope(engine) as s:
        job = _get(s, Job, job_id)
        steps = s.exec(select(JobStep).where(JobStep.job_id == job_id).order_by(col(JobStep.id))).all()
        results = s.exec(select(Result).where(Result.job_id == job_id)).all()
        return JobDetail.model_validate(
            job,
            update={
                "worker": job.leased_by,
                "steps": [JobStepOut.model_validate(x) for x in steps],
                "results": [ResultOut.model_validate(r) for r in results],
            },
        )


def retry_job(engine: Engine, job_id: int, budget: int) -> JobOut:
    """Re-queue a finished (failed, cancelled or succeeded) job now."""
    with session_scope(engine) as s:
        job = _get(s, Job, job_id)
        job_states.retry(s, job, budget)
        return JobOut.model_validate(job)


def cancel_job(engine: Engine, job_id: int) -> JobOut:
    """Cancel a queued or running job."""
    with session_scope(engine) as s:
        job = _get(s, Job, job_id)
        job_states.cancel(s, job)
        return JobOut.model_validate(job)


def list_deliveries(
    engine: Engine,
    state: str | None = None,
    limit: int = 100,
    *,
    destination: str | None = None,
    offset: int = 0,
) -> list[DeliveryOut]:
    """Outbox rows, newest first, with the result they carry; optionally of one state and destination."""
    with session_scope(engine) as s:
        q = select(Delivery, Result).join(Result, col(Result.id) == Delivery.result_id)
        q = q.where(*_delivery_filters(state, destination))
        rows = s.exec(q.order_by(col(Delivery.id).desc()).offset(offset).limit(limit)).all()
        return [_delivery_out(d, r) for d, r in rows]


def _delivery_filters(state: str | None, destination: str | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if state:
        where.append(col(Delivery.state) == DeliveryState(state))
    if destination:
        where.append(col(Delivery.destination) == destination)
    return where


def page_deliveries(
    engine: Engine, state: str | None = None, destination: str | None = None, limit: int = 50, offset: int = 0
) -> DeliveryPage:
    """One page of :func:`list_deliveries` and the number of deliveries the filters match."""
    items = list_deliveries(engine, state, limit, destination=destination, offset=offset)
    with session_scope(engine) as s:
        where = _delivery_filters(state, destination)
        total = s.exec(select(func.count()).select_from(Delivery).where(*where)).one()
    return DeliveryPage(items=items, total=int(total), offset=offset, limit=limit)


def retry_delivery(engine: Engine, delivery_id: int) -> DeliveryOut:
    """Send a failed or dismissed delivery again now."""
    with session_scope(engine) as s:
        d = _unsent_delivery(s, delivery_id)
        d.state, d.next_attempt_at = DeliveryState.pending, utcnow()
        s.add(d)
        return _delivery_out(d, _get(s, Result, d.result_id))


def dismiss_delivery(engine: Engine, delivery_id: int) -> DeliveryOut:
    """Stop retrying a delivery (it stays listed as dismissed)."""
    with session_scope(engine) as s:
        d = _unsent_delivery(s, delivery_id)
        d.state = DeliveryState.dismissed
        s.add(d)
        return _delivery_out(d, _get(s, Result, d.result_id))


def _unsent_delivery(s: Session, delivery_id: int) -> Delivery:
    """The delivery ``delivery_id``; :class:`RadloopError` if it was already sent."""
    d = _get(s, Delivery, delivery_id)
    if d.state == DeliveryState.sent:
        raise RadloopError(f"delivery {delivery_id} was already sent")
    return d


def counts(engine: Engine) -> dict[str, int]:
    """Totals for a status line: studies, series, jobs by state, pending deliveries."""
    with session_scope(engine) as s:
        out = {
            "studies": s.exec(select(func.count()).select_from(Study)).one(),
            "series": s.exec(select(func.count()).select_from(Series)).one(),
        }
        for state in JobState:
            out[f"jobs_{state.value}"] = s.exec(
                select(func.count()).select_from(Job).where(Job.state == state)
            ).one()
        out["deliveries_pending"] = s.exec(
            select(func.count()).select_from(Delivery).where(Delivery.state == DeliveryState.pending)
        ).one()
        return out


# --------------------------------------------------------------------------- studies and series


def get_study(engine: Engine, study_instance_uid: str) -> StudyDetail:
    """One study with its series and the jobs run on them."""
    with session_scope(engine) as s:
        st = s.exec(select(Study).where(Study.study_instance_uid == study_instance_uid)).first()
        if st is None:
            raise NotFoundError(f"no study {study_instance_uid}")
        jobs = _jobs_where(s, col(Job.study_instance_uid) == study_instance_uid)
        return StudyDetail.model_validate(st, update={"series": _series_of(s, st), "jobs": jobs})


def list_series(
    engine: Engine, state: str | None = None, routing_status: str | None = None, limit: int = 100
) -> list[SeriesOut]:
    """Series, newest first, optionally filtered by assembly state and routing outcome."""
    with session_scope(engine) as s:
        q = select(Series, Study.study_instance_uid).join(Study, col(Study.id) == Series.study_id)
        if state:
            q = q.where(Series.state == state)
        if routing_status:
            q = q.where(Series.routing_status == routing_status)
        rows = s.exec(q.order_by(col(Series.id).desc()).limit(limit)).all()
        return [_series_out(se, uid) for se, uid in rows]


def get_series(engine: Engine, series_instance_uid: str) -> SeriesDetail:
    """One series with its study UID and its jobs."""
    with session_scope(engine) as s:
        found = s.exec(
            select(Series, Study.study_instance_uid)
            .join(Study, col(Study.id) == Series.study_id)
            .where(Series.series_instance_uid == series_instance_uid)
        ).first()
        if found is None:
            raise NotFoundError(f"no series {series_instance_uid}")
        se, study_uid = found
        jobs = _jobs_where(s, col(Job.series_id) == se.id)
        return SeriesDetail.model_validate(se, update={"study_instance_uid": study_uid, "jobs": jobs})


def job_logs(engine: Engine, job_id: int) -> str:
    """The log lines of every operator of a job, attempt by attempt, as one text."""
    job = get_job(engine, job_id)
    parts = []
    for step in job.steps:
        head = f"== attempt {step.attempt} · {step.operator_id} ({step.operator}) · {step.state}"
        if step.duration_s is not None:
            head += f" · {step.duration_s:.2f} s"
        parts.append("\n".join(x for x in (head, step.log.rstrip(), step.error) if x))
    return "\n".join(parts) + ("\n" if parts else "")


# --------------------------------------------------------------------------- reviews


def list_reviews(engine: Engine, result_id: int | None = None, limit: int = 100) -> list[ReviewOut]:
    """Review decisions, newest first (optionally those on one result), with the volume change."""
    rows = decisions.list_reviews(engine, result_id=result_id, limit=limit)
    return [ReviewOut.model_validate(row) for row in rows]


def pending_reviews(engine: Engine, limit: int = 200) -> list[WorklistItemOut]:
    """AI SEG results nobody has decided on yet (the worklist), newest first."""
    return [WorklistItemOut.model_validate(row) for row in decisions.pending_results(engine, limit)]


# --------------------------------------------------------------------------- pipelines and models


def list_pipelines(catalog: PipelineCatalog) -> list[PipelineOut]:
    """Loaded pipelines: name, version, match rules, operators in order, destinations."""
    return [_pipeline_row(p) for p in catalog.all()]


def get_pipeline(catalog: PipelineCatalog, name: str) -> PipelineOut:
    """One loaded pipeline; :class:`NotFoundError` if none has this name."""
    if name not in catalog:
        raise NotFoundError(f"no pipeline named {name!r} (have: {', '.join(catalog.names())})")
    return _pipeline_row(catalog.get(name))


def _pipeline_row(p: Pipeline) -> PipelineOut:
    return PipelineOut(
        name=p.name,
        version=p.spec.version,
        description=p.spec.description,
        priority=p.spec.priority.value,
        match=p.spec.match.model_dump(mode="json"),
        operators=[OperatorOut(id=b.step.id, use=b.step.use) for b in p.steps],
        destinations=list(p.spec.destinations),
        file=str(p.source),
    )


def list_models(settings: Settings, catalog: PipelineCatalog) -> list[ModelOut]:
    """Models radloop can run: every version in the model store, then the models packaged with
    radloop, then models a pipeline names that neither has (``available`` false); each with the
    pipelines that use it."""
    from radloop.inference.packaged import packaged_models
    from radloop.inference.store import ModelStore

    used = _models_used_by_pipelines(catalog)
    store = ModelStore(settings.inference.store_dir(settings.data_dir))
    rows = [_model_row(m.spec, "store", used) for m in store.all()]
    have = {r.name for r in rows}
    packaged = sorted(packaged_models().items())
    rows += [_model_row(p.spec, "package", used) for name, p in packaged if name not in have]
    have |= {r.name for r in rows}
    missing = [(name, pipelines) for name, pipelines in sorted(used.items()) if name not in have]
    rows += [
        ModelOut(
            name=name,
            version="",
            format="",
            task="",
            description="",
            location="missing",
            available=False,
            used_by=pipelines,
        )
        for name, pipelines in missing
    ]
    return rows


def _models_used_by_pipelines(catalog: PipelineCatalog) -> dict[str, list[str]]:
    """Model name → pipelines whose operators name it (``with: {model: NAME}``)."""
    used: dict[str, set[str]] = {}
    for p in catalog.all():
        for b in p.steps:
            name = b.options.model_dump().get("model")
            if isinstance(name, str) and name:
                used.setdefault(name, set()).add(p.name)
    return {k: sorted(v) for k, v in used.items()}


def _model_row(spec: ModelSpec, location: str, used: dict[str, list[str]]) -> ModelOut:
    return ModelOut(
        name=spec.name,
        version=spec.version,
        format=spec.format,
        task=spec.task,
        description=spec.description,
        location=location,
        available=True,
        used_by=used.get(spec.name, []),
    )


# --------------------------------------------------------------------------- health


def health(engine: Engine) -> Health:
    """Liveness and database reachability; raises nothing (the status says what is wrong)."""
    from radloop import __version__

    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        database = "ok"
    except Exception as e:  # a health probe reports, never raises
        database = f"error: {type(e).__name__}"
    return Health(status="ok" if database == "ok" else "degraded", database=database, version=__version__)


# --------------------------------------------------------------------------- API tokens


def create_token(
    engine: Engine, name: str, roles: Sequence[str] = tuple(DEFAULT_TOKEN_ROLES)
) -> TokenCreated:
    """A new API token holding ``roles``: the row plus ``token`` (shown once; only its hash is stored)."""
    row, token = tokens.create(engine, name, roles)
    return TokenCreated.model_validate(row, update={"active": row.revoked_at is None, "token": token})


def revoke_token(engine: Engine, name_or_id: str) -> TokenOut:
    """Revoke an active token by name or id."""
    return _token_out(tokens.revoke(engine, name_or_id))


def list_tokens(engine: Engine) -> list[TokenOut]:
    """Every token (never the token itself)."""
    return [_token_out(t) for t in tokens.list_all(engine)]


def _token_out(t: ApiToken) -> TokenOut:
    return TokenOut.model_validate(t, update={"active": t.revoked_at is None})


# --------------------------------------------------------------------------- pulls


def pull_study(
    puller: Puller, source: str, accession_number: str = "", study_instance_uid: str = ""
) -> list[PullOut]:
    """Retrieve a study (by accession number or UID) from a source now; one row per study found."""
    rows = puller.pull(source, accession_number=accession_number, study_instance_uid=study_instance_uid)
    return [PullOut.model_validate(r) for r in rows]


def poll_source(puller: Puller, source: str) -> PollOut:
    """Poll a source once now (as the scheduled poll does)."""
    report = puller.poll(source)
    return PollOut(
        source=report.source,
        found=report.found,
        skipped=report.skipped,
        retrieved=[PullOut.model_validate(r) for r in report.retrieved],
    )


def list_pulls(
    engine: Engine, source: str | None = None, state: str | None = None, limit: int = 100
) -> list[PullOut]:
    """Studies found on pull sources, newest first."""
    with session_scope(engine) as s:
        q = select(PulledStudy).order_by(col(PulledStudy.id).desc()).limit(limit)
        if source:
            q = q.where(PulledStudy.source == source)
        if state:
            q = q.where(PulledStudy.state == PullState(state))
        return [PullOut.model_validate(r) for r in s.exec(q).all()]


def list_sources(settings: Settings, engine: Engine) -> list[SourceOut]:
    """Configured pull sources with their polling settings and cursor (no credentials)."""
    with session_scope(engine) as s:
        cursors = {c.source: c for c in s.exec(select(PollCursor)).all()}
    out = []
    for src in settings.sources:
        cursor = cursors.get(src.name)
        where = src.url if isinstance(src, DicomwebSource) else f"{src.ae_title}@{src.host}:{src.port}"
        out.append(
            SourceOut(
                name=src.name,
                kind=src.kind,
                address=where,
                listener_ae_title=src.listener_ae_title,
                retrieve=getattr(src, "retrieve", "wado-rs"),
                poll=src.poll,
                cursor=CursorOut.model_validate(cursor) if cursor else None,
            )
        )
    return out


# --------------------------------------------------------------------------- UPS workitems (AI worklist)


def create_workitem(worklist: Worklist, ds: Dataset, workitem_uid: str = "") -> str:
    """Create a SCHEDULED workitem (queuing its pipeline's jobs on the input study); its UID."""
    return worklist.create(ds, workitem_uid)


def search_workitems(
    worklist: Worklist, matches: Mapping[str, str], limit: int, offset: int
) -> list[Dataset]:
    """Workitems matching attribute values (wildcards ``*``/``?``), newest first."""
    return worklist.search(matches, limit, offset)


def get_workitem(worklist: Worklist, workitem_uid: str) -> Dataset:
    """One workitem with its state and, once its jobs wrote them, its output instances."""
    return worklist.retrieve(workitem_uid)


def update_workitem(worklist: Worklist, workitem_uid: str, transaction_uid: str, ds: Dataset) -> None:
    """Replace attributes of a workitem (an IN PROGRESS one only with its Transaction UID)."""
    worklist.update(workitem_uid, transaction_uid, ds)


def change_workitem_state(
    worklist: Worklist, workitem_uid: str, ds: Dataset, claimant: str
) -> ProcedureStepState | None:
    """Claim, complete or cancel a workitem; the state it already was in, if the request changed nothing."""
    target = parse_state(str(ds.get("ProcedureStepState", "")))
    already = worklist.change_state(workitem_uid, target, transaction_uid_of(ds), claimant)
    return target if already else None


def request_workitem_cancel(worklist: Worklist, workitem_uid: str, reason: str) -> bool:
    """Ask for a workitem to be canceled; True if it already was."""
    return worklist.request_cancel(workitem_uid, reason)


def subscribe_workitem(worklist: Worklist, workitem_uid: str, ae_title: str, deletion_lock: bool) -> None:
    """Subscribe an AE title to a workitem's events (or every workitem's: the global Worklist UID)."""
    worklist.subscribe(workitem_uid, ae_title, deletion_lock)


def unsubscribe_workitem(worklist: Worklist, workitem_uid: str, ae_title: str) -> None:
    """Remove a subscription (from the global one: all of the AE title's)."""
    worklist.unsubscribe(workitem_uid, ae_title)


def suspend_worklist_subscription(worklist: Worklist, ae_title: str) -> None:
    """Stop subscribing an AE title to new workitems; its current subscriptions stay."""
    worklist.suspend(ae_title)


def workitem_events(worklist: Worklist, ae_title: str, after_id: int) -> list[Event]:
    """The next event reports for an AE title's notification channel."""
    return worklist.events_for(ae_title, after_id)


# --------------------------------------------------------------------------- audit trail (IHE ATNA)


def record_security_change(
    settings: Settings, engine: Engine, actor: str, subject: str, description: str
) -> None:
    """A Security Alert audit message (PS3.15 A.5.3.11): ``actor`` changed ``subject`` (a token, a
    model stage); a change of roles or credentials is Security Configuration, others Software."""
    alert = atna.SECURITY_CONFIGURATION if subject.startswith("token:") else atna.SOFTWARE_CONFIGURATION
    with session_scope(engine) as s:
        atna.record(s, settings.audit, atna.security_alert(atna.person(actor), alert, subject, description))


def list_audit_messages(
    engine: Engine,
    *,
    since: datetime | None = None,
    user: str | None = None,
    patient: str | None = None,
    limit: int = 200,
    with_xml: bool = False,
) -> list[AuditMessageOut]:
    """Audit messages, newest first: at or after ``since``, requested by ``user``, naming ``patient``."""
    q = select(AuditMessage)
    if since is not None:
        q = q.where(AuditMessage.at >= since)
    if user:
        q = q.where(AuditMessage.user == user)
    if patient:
        q = q.where(AuditMessage.patient_id == patient)
    with session_scope(engine) as s:
        rows = s.exec(q.order_by(col(AuditMessage.id).desc()).limit(limit)).all()
        return [AuditMessageOut.model_validate(r, update={} if with_xml else {"xml": ""}) for r in rows]


# --------------------------------------------------------------------------- operator console


def search_studies(
    engine: Engine,
    *,
    patient: str = "",
    accession: str = "",
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    ae: str = "",
    limit: int = 50,
    offset: int = 0,
) -> StudyPage:
    """Studies matching every given filter, newest first, one page of them with their series.

    ``patient`` matches a part of the patient's name or the start of the patient ID (any case),
    ``accession`` the start of the accession number, ``date_from``/``date_to`` the StudyDate
    (YYYYMMDD, inclusive), ``modality`` a series' modality and ``ae`` the AE title a series was
    sent to or from.
    """
    where: list[ColumnElement[bool]] = []
    if patient:
        like = _like_escape(patient.strip())
        where.append(
            col(Study.patient_name).ilike(f"%{like}%", escape="\\")
            | col(Study.patient_id).ilike(f"{like}%", escape="\\")
        )
    if accession:
        where.append(col(Study.accession_number).like(f"{_like_escape(accession.strip())}%", escape="\\"))
    if date_from:
        where.append(col(Study.study_date) >= date_from.replace("-", ""))
    if date_to:
        where.append(col(Study.study_date) <= date_to.replace("-", ""))
    series_where: list[ColumnElement[bool]] = []
    if modality:
        series_where.append(col(Series.modality) == modality.strip().upper())
    if ae:
        title = ae.strip().upper()
        series_where.append((col(Series.called_ae) == title) | (col(Series.calling_ae) == title))
    if series_where:  # evaluated once (not per study): the studies with such a series
        where.append(col(Study.id).in_(select(Series.study_id).where(*series_where)))
    with session_scope(engine) as s:
        total = s.exec(select(func.count()).select_from(Study).where(*where)).one()
        q = select(Study).where(*where).order_by(col(Study.id).desc()).offset(offset).limit(limit)
        studies = s.exec(q).all()
        series_of: dict[int, list[SeriesOut]] = {}
        ids = [st.id for st in studies]
        uids = {st.id: st.study_instance_uid for st in studies}
        for se in s.exec(select(Series).where(col(Series.study_id).in_(ids)).order_by(col(Series.id))).all():
            series_of.setdefault(se.study_id, []).append(_series_out(se, uids[se.study_id]))
        items = [
            StudyOut.model_validate(st, update={"series": series_of.get(st.id or 0, [])}) for st in studies
        ]
    return StudyPage(items=items, total=int(total), offset=offset, limit=limit)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def destination_status(settings: Settings, engine: Engine) -> list[DestinationStatusOut]:
    """Every configured destination with its outbox counts; ``down`` when a pending delivery's
    last attempt failed (the outbox is retrying it), with that error."""
    with session_scope(engine) as s:
        rows = s.exec(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                col(Delivery.destination), col(Delivery.state)
            )
        ).all()
        counts_of: dict[str, dict[str, int]] = {}
        for name, state, n in rows:
            counts_of.setdefault(name, {})[DeliveryState(state).value] = int(n)
        failing = s.exec(
            select(Delivery.destination, Delivery.last_error)
            .where(
                col(Delivery.state) == DeliveryState.pending,
                col(Delivery.attempts) > 0,
                col(Delivery.last_error) != "",
            )
            .order_by(col(Delivery.id).desc())
        ).all()
    errors: dict[str, str] = {}
    for name, error in failing:
        errors.setdefault(name, error)
    configured = {d.name: d.kind for d in settings.destinations}
    names = list(configured) + sorted(set(counts_of) - set(configured))
    return [
        DestinationStatusOut(
            name=name,
            kind=configured.get(name, "unknown"),
            pending=counts_of.get(name, {}).get("pending", 0),
            failed=counts_of.get(name, {}).get("failed", 0),
            sent=counts_of.get(name, {}).get("sent", 0),
            down=name in errors,
            last_error=errors.get(name, ""),
        )
        for name in names
    ]


OVERVIEW_WINDOWS = {"hour": (timedelta(hours=1), 12), "day": (timedelta(days=1), 24)}
"""The overview's windows: length and number of chart buckets (5 minutes, 1 hour)."""


def overview(
    settings: Settings, engine: Engine, window: str = "hour", now: datetime | None = None
) -> OverviewOut:
    """What the console's overview shows over the last hour or day: instances received, series
    completed, jobs finished per bucket; the queue and the outbox now; destinations; alerts."""
    if window not in OVERVIEW_WINDOWS:
        raise RadloopError(f"window must be one of {', '.join(OVERVIEW_WINDOWS)}, not {window!r}")
    length, n = OVERVIEW_WINDOWS[window]
    end = now or utcnow()
    step = length / n
    since = end - length
    starts = [since + step * i for i in range(n)]
    with session_scope(engine) as s:
        instances = _bucket_counts(s, col(Instance.received_at), starts, step)
        completed = _bucket_counts(s, col(Series.completed_at), starts, step)
        succeeded = _bucket_counts(
            s, col(Job.finished_at), starts, step, col(Job.state) == JobState.succeeded
        )
        failed = _bucket_counts(s, col(Job.finished_at), starts, step, col(Job.state) == JobState.failed)
        sent = _bucket_counts(s, col(Delivery.sent_at), starts, step)
        jobs_now = _states(s, col(Job.state), JobState)
        finished_rows = s.exec(
            select(Job.state, func.count()).where(col(Job.finished_at) >= since).group_by(col(Job.state))
        ).all()
        deliveries_now = _states(s, col(Delivery.state), DeliveryState)
    finished = {JobState(k).value: int(v) for k, v in finished_rows}
    buckets = [
        BucketOut(
            start=t,
            instances=instances[i],
            series_completed=completed[i],
            jobs_succeeded=succeeded[i],
            jobs_failed=failed[i],
            deliveries_sent=sent[i],
        )
        for i, t in enumerate(starts)
    ]
    destinations = destination_status(settings, engine)
    return OverviewOut(
        window=window,
        since=since,
        instances_received=sum(instances),
        series_completed=sum(completed),
        jobs_by_state=jobs_now,
        jobs_finished=finished,
        deliveries_by_state=deliveries_now,
        buckets=buckets,
        destinations=destinations,
        alerts=_alerts(settings, jobs_now, deliveries_now, destinations),
    )


def _bucket_counts(
    s: Session, column: Any, starts: list[datetime], step: timedelta, *where: ColumnElement[bool]
) -> list[int]:
    """Rows whose ``column`` falls in each bucket: one GROUP BY over the window (an index range)."""
    since = starts[0].timestamp()
    step_s = step.total_seconds()
    if s.get_bind().dialect.name == "sqlite":  # timestamps are UTC text there
        seconds: Any = func.cast(func.strftime("%s", column), Integer) - since
    else:
        seconds = func.extract("epoch", column) - since
    bucket = func.floor(seconds / step_s)
    rows = s.exec(
        select(bucket, func.count())
        .where(column >= starts[0], column < starts[-1] + step, *where)
        .group_by(bucket)
    ).all()
    out = [0] * len(starts)
    for index, n in rows:
        if index is not None and 0 <= int(index) < len(out):
            out[int(index)] += int(n)
    return out


def _states(s: Session, column: Any, states: Any) -> dict[str, int]:
    rows = dict(s.exec(select(column, func.count()).group_by(column)).all())
    return {state.value: int(rows.get(state, 0)) for state in states}


def _alerts(
    settings: Settings,
    jobs_now: dict[str, int],
    deliveries_now: dict[str, int],
    destinations: list[DestinationStatusOut],
) -> list[AlertOut]:
    alerts = []
    if jobs_now.get("failed"):
        alerts.append(
            AlertOut(
                kind="failed-jobs",
                message=f"{jobs_now['failed']} failed job(s)",
                link="/console/queues?state=failed",
            )
        )
    if deliveries_now.get("failed"):
        alerts.append(
            AlertOut(
                kind="failed-deliveries",
                message=f"{deliveries_now['failed']} failed deliveries",
                link="/console/deliveries?state=failed",
            )
        )
    for d in destinations:
        if d.down:
            alerts.append(
                AlertOut(
                    kind="destination-down",
                    message=f"destination {d.name} is down: {d.pending} pending; last error: {d.last_error}",
                    link=f"/console/deliveries?destination={d.name}",
                )
            )
    floor = settings.dicom.min_free_bytes
    if floor > 0 and settings.data_dir.is_dir():
        free = shutil.disk_usage(settings.data_dir).free
        if free < 1.5 * floor:
            alerts.append(
                AlertOut(
                    kind="disk",
                    message=(
                        f"disk nearly at its floor: {free / 2**30:.1f} GiB free, "
                        f"new data refused below {floor / 2**30:.1f} GiB (dicom.min_free_bytes)"
                    ),
                    link="/console/",
                )
            )
    for url in _unreachable_tritons(settings):
        alerts.append(
            AlertOut(kind="triton", message=f"Triton at {url} is unreachable", link="/console/models")
        )
    return alerts


def _unreachable_tritons(settings: Settings, timeout_s: float = 0.5) -> list[str]:
    """The Triton URLs in the inference settings that do not accept a TCP connection."""
    urls = {
        b.url
        for b in [settings.inference.default, *settings.inference.models.values()]
        if isinstance(b, TritonBackendSettings)
    }
    down = []
    for url in sorted(urls):
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "", parts.port or 8000), timeout=timeout_s):
                pass
        except OSError:
            down.append(url)
    return down


def pipeline_files(settings: Settings, catalog: PipelineCatalog | None = None) -> list[PipelineFileOut]:
    """Every pipeline file the settings point at, read and validated now (as ``radloop pipelines
    validate`` does): its operator graph, or its error with file, line and field. ``loaded``: the
    running catalog holds this file's pipeline (a file changed since start is valid or not, but
    runs as it was when loaded)."""
    from radloop.pipelines.catalog import REFERENCE_DIR
    from radloop.pipelines.operators import builtin_registry
    from radloop.pipelines.spec import load_pipeline

    registry = builtin_registry()
    folders = ([REFERENCE_DIR] if settings.pipelines.include_reference else []) + list(
        settings.pipelines.dirs
    )
    loaded = {str(p.source) for p in catalog.all()} if catalog is not None else set()
    out = []
    for folder in folders:
        paths = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")) if folder.is_dir() else []
        for path in paths:
            try:
                text = path.read_text(errors="replace")
            except OSError as e:
                text = f"(cannot read: {e})"
            try:
                p = load_pipeline(path, registry)
            except ConfigError as e:
                line, field, message = _config_error_parts(str(e), path)
                out.append(
                    PipelineFileOut(
                        file=str(path),
                        text=text,
                        valid=False,
                        name="",
                        version="",
                        loaded=str(path) in loaded,
                        error=message,
                        line=line,
                        field=field,
                        operators=[],
                    )
                )
                continue
            out.append(
                PipelineFileOut(
                    file=str(path),
                    text=text,
                    valid=True,
                    name=p.name,
                    version=p.spec.version,
                    loaded=str(path) in loaded,
                    error="",
                    line=None,
                    field="",
                    operators=[
                        GraphNodeOut(id=b.step.id, use=b.step.use, inputs=dict(b.step.inputs))
                        for b in p.steps
                    ],
                )
            )
    return out


def _config_error_parts(message: str, path: Path) -> tuple[int | None, str, str]:
    """``FILE:LINE: FIELD: MESSAGE`` (as pipeline validation words it) → line, field, message."""
    rest = message.removeprefix(f"{path}:")
    m = re.match(r"(\d+): ([^:\s]+): (.*)", rest, re.DOTALL)
    if m is None:
        return None, "", rest.strip()
    return int(m.group(1)), m.group(2), m.group(3)
