"""The database tables (SQLModel). Column names follow DICOM keywords in snake_case.

Each entity shown to users has a ``…Base`` with the columns everyone may read; the table model
adds its id and internal columns, and the read model in :mod:`radloop.core.read_models` adds the
id and what it is shown with (as ``ItemBase`` / ``Item`` / ``ItemPublic`` in the FastAPI template).

Timestamps are timezone-aware UTC (:func:`utcnow`); SQLModel's ``UTCDateTime`` column type stores
them alike on SQLite and PostgreSQL and refuses naive values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, in UTC (the form every timestamp column holds)."""
    return datetime.now(UTC)


class SeriesState(StrEnum):
    """Assembly state of a series: still receiving, or complete (quiet period / association end)."""

    open = "open"
    complete = "complete"


class RoutingStatus(StrEnum):
    """What routing made of a completed series."""

    pending = "pending"
    routed = "routed"
    unmatched = "unmatched"


class JobState(StrEnum):
    """``queued → running → succeeded | failed | cancelled`` (running → queued on retry)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Priority(StrEnum):
    """Job priority; ``rank`` orders the queue (lower first)."""

    stat = "stat"
    high = "high"
    normal = "normal"
    low = "low"

    @property
    def rank(self) -> int:
        return ["stat", "high", "normal", "low"].index(self.value)


class DeliveryState(StrEnum):
    """Outbox row state: ``pending`` (incl. retrying) → ``sent`` | ``failed``; ``dismissed`` by a user."""

    pending = "pending"
    sent = "sent"
    failed = "failed"
    dismissed = "dismissed"


class StudyBase(SQLModel):
    """A study radloop received (or pulled): the study-level attributes of its first instance."""

    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    patient_id: str = Field(default="", index=True)
    patient_name: str = ""
    accession_number: str = Field(default="", index=True)
    study_date: str = Field(default="", index=True)
    study_description: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Study(StudyBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class SeriesBase(SQLModel):
    """A series: where it came from, its assembly state and what routing made of it."""

    series_instance_uid: str = Field(max_length=64, unique=True, index=True)
    modality: str = Field(default="", index=True)
    series_description: str = ""
    series_number: int | None = None
    sop_class_uid: str = ""
    called_ae: str = Field(default="", index=True)
    calling_ae: str = ""
    state: SeriesState = Field(default=SeriesState.open, index=True)
    revision: int = 0
    instance_count: int = 0
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = Field(default=None, index=True)
    routing_status: RoutingStatus = RoutingStatus.pending
    routing_note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class Series(SeriesBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)


class Instance(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="series.id", index=True)
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    instance_number: int | None = None
    path: str  # relative to data_dir
    size_bytes: int = 0
    received_at: datetime = Field(default_factory=utcnow, index=True)


class JobBase(SQLModel):
    """One run of a pipeline on one revision of a series: state, attempts, lease and error."""

    pipeline: str = Field(index=True)
    pipeline_version: str = ""
    series_id: int = Field(foreign_key="series.id", index=True)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_revision: int = 0
    state: JobState = Field(default=JobState.queued, index=True)
    priority: Priority = Priority.normal
    attempts: int = 0
    max_attempts: int = 3
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    lease_until: datetime | None = None
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = Field(default=None, index=True)


class Job(JobBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True)
    priority_rank: int = 2
    leased_by: str = ""
    published_at: datetime | None = None  # celery executor: when its id was last sent to the broker


class JobStepBase(SQLModel):
    """One operator run within one attempt of a job: timing, state and its log lines."""

    attempt: int
    operator_id: str
    operator: str
    state: str = "running"
    started_at: datetime = Field(default_factory=utcnow)
    duration_s: float | None = None
    log: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    stages: dict[str, float] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class JobStep(JobStepBase, table=True):
    """One operator run within one attempt of a job: timing, state and its log lines."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)


class ResultBase(SQLModel):
    """A DICOM object a job wrote (SEG, RTSTRUCT, SR, SC)."""

    kind: str
    sop_class_uid: str = ""
    sop_instance_uid: str = Field(max_length=64, unique=True)
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Result(ResultBase, table=True):
    """A DICOM object a job wrote (SEG, RTSTRUCT, SR, SC), and where it lies."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    path: str  # relative to data_dir


class DeliveryBase(SQLModel):
    """Outbox: one row per result × destination."""

    result_id: int = Field(foreign_key="result.id", index=True)
    destination: str
    state: DeliveryState = Field(default=DeliveryState.pending, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = Field(default=None, index=True)


class Delivery(DeliveryBase, table=True):
    """Outbox: one row per result × destination."""

    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: int | None = Field(default=None, primary_key=True)


class AuditEvent(SQLModel, table=True):
    """Who did what to which subject, when (no PHI in ``detail``)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str
    subject: str = ""
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class AuditMessageBase(SQLModel):
    """One DICOM audit message (PS3.15 A.5): the local ATNA trail and the queue to the repository.

    ``event_id`` is the EventID code (``110104``), ``user`` the requesting participant,
    ``patient_id``/``study_instance_uid`` the first patient and study it names (for
    ``radloop audit list``); ``xml`` is the message as sent. ``sent_at`` is set only after the
    syslog write succeeded; ``attempts``/``next_attempt_at``/``last_error`` are the retry state.
    """

    at: datetime = Field(default_factory=utcnow, index=True)
    event_id: str = Field(index=True)
    event_action: str = ""
    outcome: int = 0
    user: str = Field(default="", index=True)
    patient_id: str = Field(default="", index=True)
    study_instance_uid: str = ""
    sent_at: datetime | None = None
    attempts: int = 0
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class AuditMessage(AuditMessageBase, table=True):
    """One DICOM audit message and its delivery state (the durable queue to the repository)."""

    __tablename__ = "audit_message"

    id: int | None = Field(default=None, primary_key=True)
    xml: str = Field(sa_column=Column(Text, nullable=False))
    pending: bool = Field(default=True, index=True)
    next_attempt_at: datetime = Field(default_factory=utcnow)


class UsedLaunchLink(SQLModel, table=True):
    """A one-time review launch link that was used: its nonce (or signature), kept until it expires."""

    __tablename__ = "used_launch_link"

    nonce_hash: str = Field(primary_key=True, max_length=64)  # SHA-256 hex of the nonce or signature
    used_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class ApiTokenBase(SQLModel):
    """A machine's credential for the HTTP API, as anyone may see it (never the token or its hash)."""

    name: str = Field(index=True)
    prefix: str = Field(default="", max_length=16)  # first characters, to recognise a token in a list
    roles: str = Field(default="viewer", max_length=200)  # space-separated role names (radloop.core.roles)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiToken(ApiTokenBase, table=True):
    """A machine's credential for the HTTP API. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)


class PullState(StrEnum):
    """A study found on a pull source: being retrieved, retrieved, or failed (retried on the next poll)."""

    retrieving = "retrieving"
    done = "done"
    failed = "failed"


class PulledStudyBase(SQLModel):
    """A study radloop retrieved (or tried to) from a pull source; polling skips those ``done``."""

    source: str = Field(index=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    accession_number: str = ""
    study_date: str = ""
    trigger: str = "manual"  # manual | poll
    state: PullState = Field(default=PullState.retrieving, index=True)
    retrievals: int = 0
    instances: int = 0
    failed_instances: int = 0
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    first_seen_at: datetime = Field(default_factory=utcnow)
    retrieved_at: datetime | None = None


class PulledStudy(PulledStudyBase, table=True):
    """A study radloop retrieved (or tried to) from a pull source; polling skips those ``done``."""

    __tablename__ = "pulled_study"
    __table_args__ = (UniqueConstraint("source", "study_instance_uid"),)

    id: int | None = Field(default=None, primary_key=True)


class PollCursorBase(SQLModel):
    """Where polling of one source stands; survives restarts."""

    polls: int = 0
    last_poll_at: datetime | None = None
    last_success_at: datetime | None = None
    since_date: str = ""  # YYYYMMDD: the StudyDate the next poll matches from
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class PollCursor(PollCursorBase, table=True):
    """Where polling of one source stands; survives restarts."""

    __tablename__ = "poll_cursor"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(unique=True, index=True)


class ReviewDecision(StrEnum):
    """What a radiologist made of an AI result: accepted as is, edited, or rejected."""

    accepted = "accepted"
    edited = "edited"
    rejected = "rejected"


class ReviewBase(SQLModel):
    """One reviewer's decision on one AI result, with the agreement between the AI mask and the final one.

    ``edited_result_id`` is the result row of the edited SEG ("reviewed and edited") when the
    decision is ``edited``; ``assessment_result_id`` the assessment SR (IHE AIRA) the decision
    was written as. ``dice`` and the volumes compare the AI mask with the final mask
    (the AI mask itself when accepted; none when rejected).
    """

    result_id: int = Field(foreign_key="result.id", index=True)
    reviewer: str = Field(index=True)
    decision: ReviewDecision = Field(index=True)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    started_at: datetime
    ended_at: datetime = Field(default_factory=utcnow, index=True)
    model_name: str = Field(default="", index=True)
    model_version: str = ""
    pipeline: str = ""
    pipeline_version: str = ""
    edited_result_id: int | None = Field(default=None, foreign_key="result.id")
    assessment_result_id: int | None = Field(default=None, foreign_key="result.id")
    dice: float | None = None
    volume_ai_ml: float | None = None
    volume_final_ml: float | None = None
    added_voxels: int | None = None
    removed_voxels: int | None = None
    session_id: str = ""


class Review(ReviewBase, table=True):
    """One reviewer's decision on one AI result (see :class:`ReviewBase`)."""

    __tablename__ = "review"

    id: int | None = Field(default=None, primary_key=True)


class WorkitemBase(SQLModel):
    """A Unified Procedure Step (UPS) workitem of the AI worklist (PS3.4 Annex CC, PS3.18 §11).

    ``dataset`` is the workitem's attributes as DICOM JSON (PS3.18 Annex F), as created and
    updated by clients; state, Transaction UID and the outputs of radloop's own jobs are columns
    and rows, merged in when the workitem is shown (:mod:`radloop.core.ups`).
    """

    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    procedure_step_state: str = Field(default="SCHEDULED", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    cancel_requested_at: datetime | None = None


class Workitem(WorkitemBase, table=True):
    """A UPS workitem; ``transaction_uid`` is the owner's (never shown), ``claimed_by`` who holds it."""

    id: int | None = Field(default=None, primary_key=True)
    dataset: dict[str, object] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    transaction_uid: str = Field(default="", max_length=64)
    claimed_by: str = ""  # "" (nobody), "radloop" (its own workers) or the claimant's token name


class WorkitemJob(SQLModel, table=True):
    """The radloop job(s) that perform a workitem; each job performs exactly one workitem."""

    __tablename__ = "workitem_job"

    id: int | None = Field(default=None, primary_key=True)
    workitem_id: int = Field(foreign_key="workitem.id", index=True)
    job_id: int = Field(foreign_key="job.id", unique=True)


class WorkitemSubscription(SQLModel, table=True):
    """An Application Entity's subscription to one workitem, or to all (the global Worklist UID)."""

    __tablename__ = "workitem_subscription"
    __table_args__ = (UniqueConstraint("ae_title", "workitem_uid"),)

    id: int | None = Field(default=None, primary_key=True)
    ae_title: str = Field(max_length=16, index=True)
    workitem_uid: str = Field(max_length=64)
    deletion_lock: bool = False
    from_event_id: int = 0  # events after this one are reported to the subscriber
    created_at: datetime = Field(default_factory=utcnow)


class WorkitemEvent(SQLModel, table=True):
    """A UPS Event Report (PS3.4 CC.2.4) waiting in order for subscribers' notification channels."""

    __tablename__ = "workitem_event"

    id: int | None = Field(default=None, primary_key=True)
    workitem_uid: str = Field(max_length=64, index=True)
    event_type_id: int
    report: dict[str, object] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    created_at: datetime = Field(default_factory=utcnow)


class StudyTriggerState(StrEnum):
    """Where a study-level pipeline stands with one study: waiting for series, queued, or unmatched."""

    waiting = "waiting"
    queued = "queued"
    unmatched = "unmatched"


class StudyTriggerBase(SQLModel):
    """What a study-level pipeline (``trigger: study``) made of one study, and why (``note``).

    ``waiting``: a required input has no series yet and ``wait_s`` has not passed (``deadline``);
    ``queued``: the job was queued (``job_id``), once per study; ``unmatched``: the deadline passed
    with a required input still missing, named in ``note``. A series arriving later is evaluated again.
    """

    pipeline: str = Field(index=True)
    study_instance_uid: str = Field(default="", max_length=64)
    state: str = Field(default=StudyTriggerState.waiting.value, index=True)
    note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    deadline: datetime | None = None
    job_id: int | None = Field(default=None, foreign_key="job.id")
    updated_at: datetime = Field(default_factory=utcnow)


class StudyTrigger(StudyTriggerBase, table=True):
    """What a study-level pipeline made of one study (see :class:`StudyTriggerBase`)."""

    __tablename__ = "study_trigger"
    __table_args__ = (UniqueConstraint("study_id", "pipeline"),)

    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)


class JobInput(SQLModel, table=True):
    """One named input of a study-level job: input name → the series chosen for it.

    Series-level jobs have none (their one series is ``job.series_id``). Priors are added by the
    job when it has retrieved them; a prior that was not found has no row.
    """

    __tablename__ = "job_input"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    name: str
    series_id: int = Field(foreign_key="series.id", index=True)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    prior: bool = False
