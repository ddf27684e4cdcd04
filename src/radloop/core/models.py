"""The database tables (SQLModel). Column names follow DICOM keywords in snake_case.

Timestamps are timezone-aware UTC (:func:`utcnow`); SQLModel's ``UTCDateTime`` column type stores
them alike on SQLite and PostgreSQL and refuses naive values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, Text, UniqueConstraint
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


class Study(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = Field(default="", index=True)
    study_date: str = ""
    study_description: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Series(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    series_instance_uid: str = Field(max_length=64, unique=True, index=True)
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    sop_class_uid: str = ""
    called_ae: str = ""
    calling_ae: str = ""
    state: SeriesState = Field(default=SeriesState.open, index=True)
    revision: int = 0
    instance_count: int = 0
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    routing_status: RoutingStatus = RoutingStatus.pending
    routing_note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class Instance(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="series.id", index=True)
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    sop_class_uid: str = ""
    transfer_syntax_uid: str = ""
    instance_number: int | None = None
    path: str  # relative to data_dir
    size_bytes: int = 0
    received_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(index=True)
    pipeline_version: str = ""
    series_id: int = Field(foreign_key="series.id", index=True)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_revision: int = 0
    idempotency_key: str = Field(unique=True)
    state: JobState = Field(default=JobState.queued, index=True)
    priority: Priority = Priority.normal
    priority_rank: int = 2
    attempts: int = 0
    max_attempts: int = 3
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    lease_until: datetime | None = None
    leased_by: str = ""
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobStep(SQLModel, table=True):
    """One operator run within one attempt of a job: timing, state and its log lines."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    attempt: int
    operator_id: str
    operator: str
    state: str = "running"
    started_at: datetime = Field(default_factory=utcnow)
    duration_s: float | None = None
    log: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class Result(SQLModel, table=True):
    """A DICOM object a job wrote (SEG, RTSTRUCT, SR, SC)."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    kind: str
    sop_class_uid: str = ""
    sop_instance_uid: str = Field(max_length=64, unique=True)
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    path: str  # relative to data_dir
    created_at: datetime = Field(default_factory=utcnow)


class Delivery(SQLModel, table=True):
    """Outbox: one row per result × destination."""

    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: int | None = Field(default=None, primary_key=True)
    result_id: int = Field(foreign_key="result.id", index=True)
    destination: str
    state: DeliveryState = Field(default=DeliveryState.pending, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class AuditEvent(SQLModel, table=True):
    """Who did what to which subject, when (no PHI in ``detail``)."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str
    subject: str = ""
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
