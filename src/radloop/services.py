"""Service functions shared by the CLI and the HTTP API: queries and user actions on studies,
jobs, deliveries, pipelines, API tokens and pulls. They take an engine (or the part they act
through), return read models (:mod:`radloop.core.read_models`), and raise radloop errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from pydicom import Dataset
from sqlalchemy import ColumnElement
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from radloop.connector.dicomweb.ups import Event, Worklist, parse_state, transaction_uid_of
from radloop.connector.pull.puller import Puller
from radloop.core import atna, tokens
from radloop.core import jobs as job_states
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError, RadloopError
from radloop.core.models import (
    ApiToken,
    AuditMessage,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    JobStep,
    PollCursor,
    PulledStudy,
    PullState,
    Result,
    Series,
    Study,
    utcnow,
)
from radloop.core.read_models import (
    AuditMessageOut,
    CursorOut,
    DeliveryOut,
    Health,
    JobDetail,
    JobOut,
    JobStepOut,
    ModelOut,
    OperatorOut,
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
    TokenCreated,
    TokenOut,
    WorklistItemOut,
)
from radloop.core.roles import DEFAULT_TOKEN_ROLES
from radloop.core.settings import DicomwebSource, Settings
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
    engine: Engine, state: str | None = None, pipeline: str | None = None, limit: int = 100
) -> list[JobOut]:
    """Jobs, newest first, optionally filtered by state and pipeline."""
    with session_scope(engine) as s:
        q = select(Job).order_by(col(Job.id).desc()).limit(limit)
        if state:
            q = q.where(Job.state == JobState(state))
        if pipeline:
            q = q.where(Job.pipeline == pipeline)
        return [JobOut.model_validate(j) for j in s.exec(q).all()]


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


def list_deliveries(engine: Engine, state: str | None = None, limit: int = 100) -> list[DeliveryOut]:
    """Outbox rows, newest first, with the result they carry."""
    with session_scope(engine) as s:
        q = select(Delivery, Result).join(Result, col(Result.id) == Delivery.result_id)
        if state:
            q = q.where(Delivery.state == DeliveryState(state))
        rows = s.exec(q.order_by(col(Delivery.id).desc()).limit(limit)).all()
        return [_delivery_out(d, r) for d, r in rows]


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
