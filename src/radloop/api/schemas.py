"""Response models of the REST API (they make the OpenAPI schema; services return plain dicts)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Problem(_Out):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""


class Health(_Out):
    status: str = Field(description="ok, or degraded when the database cannot be reached")
    database: str
    version: str


class SeriesOut(_Out):
    id: int
    series_instance_uid: str
    study_instance_uid: str | None = None
    modality: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    called_ae: str
    calling_ae: str
    state: str
    revision: int
    instance_count: int
    first_received_at: str
    last_received_at: str
    completed_at: str | None
    routing_status: str
    routing_note: str


class JobOut(_Out):
    id: int
    pipeline: str
    pipeline_version: str
    series_id: int
    study_instance_uid: str
    series_instance_uid: str
    series_revision: int
    state: str
    priority: str
    attempts: int
    max_attempts: int
    next_attempt_at: str
    lease_until: str | None
    error: str
    created_at: str
    started_at: str | None
    finished_at: str | None


class SeriesDetail(SeriesOut):
    jobs: list[JobOut]


class StudyOut(_Out):
    id: int
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_description: str
    created_at: str
    series: list[SeriesOut]


class StudyDetail(StudyOut):
    jobs: list[JobOut]


class StepOut(_Out):
    """One operator run: its timing (``duration_s``) and its log."""

    attempt: int
    operator_id: str
    operator: str
    state: str
    started_at: str
    duration_s: float | None
    log: str
    error: str


class ResultOut(_Out):
    id: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    created_at: str


class JobDetail(JobOut):
    steps: list[StepOut]
    results: list[ResultOut]


class DeliveryOut(_Out):
    id: int
    result_id: int
    job_id: int
    kind: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: str
    last_error: str
    created_at: str
    sent_at: str | None


class OperatorOut(_Out):
    id: str
    use: str


class PipelineOut(_Out):
    name: str
    version: str
    description: str
    priority: str
    match: dict[str, Any]
    operators: list[OperatorOut]
    destinations: list[str]
    file: str


class ModelOut(_Out):
    """A model: where it comes from (``store``, ``package``, ``missing``) and the pipelines using it."""

    name: str
    version: str
    format: str
    task: str
    description: str
    location: str
    available: bool
    used_by: list[str]


class PullOut(_Out):
    id: int
    source: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    trigger: str
    state: str
    retrievals: int
    instances: int
    failed_instances: int
    error: str
    first_seen_at: str
    retrieved_at: str | None


class CursorOut(_Out):
    polls: int
    last_poll_at: str | None
    last_success_at: str | None
    since_date: str
    last_error: str


class SourceOut(_Out):
    name: str
    kind: str
    address: str
    listener_ae_title: str
    retrieve: str
    poll: dict[str, Any]
    cursor: CursorOut | None


class PollOut(_Out):
    source: str
    found: int
    skipped: int
    retrieved: list[PullOut]


class PullRequest(BaseModel):
    """Which study to pull: give ``accession_number`` or ``study_instance_uid``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=128)
    accession_number: str = Field("", max_length=64)
    study_instance_uid: str = Field("", max_length=64, pattern=r"^([0-9.]*)$")

    @model_validator(mode="after")
    def _one_key(self) -> PullRequest:
        if not self.accession_number and not self.study_instance_uid:
            raise ValueError("give accession_number or study_instance_uid")
        return self
