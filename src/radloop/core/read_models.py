"""Read models: what services return and what the API and the CLI show, one shape per entity.

Each derives from the ``…Base`` of its table in :mod:`radloop.core.models` (the columns anyone
may read) and adds the row's id and what it is shown with: a series with its study's UID, a job
with its steps and results, a delivery with the result it carries. Internal columns (lease owner,
idempotency key, token hash, file paths) are in the table models only, so they cannot leak.
Dumped with ``model_dump(mode="json")``: datetimes become ISO 8601 strings, enums their values.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, JsonValue
from pydantic import Field as PydanticField

from radloop.core.models import (
    ApiTokenBase,
    AuditMessageBase,
    DeliveryBase,
    JobBase,
    JobStepBase,
    PollCursorBase,
    PulledStudyBase,
    ResultBase,
    ReviewBase,
    SeriesBase,
    StudyBase,
)
from radloop.core.settings import PollSettings


class SeriesOut(SeriesBase):
    """A series and the UID of its study."""

    id: int
    study_instance_uid: str


class JobOut(JobBase):
    """A job without its steps and results."""

    id: int


class SeriesDetail(SeriesOut):
    """A series with the jobs run on it, oldest first."""

    jobs: list[JobOut]


class StudyOut(StudyBase):
    """A study with its series, oldest first."""

    id: int
    series: list[SeriesOut]


class StudyDetail(StudyOut):
    """A study with its series and the jobs run on them, oldest first."""

    jobs: list[JobOut]


class JobStepOut(JobStepBase):
    """One operator run: its timing (``duration_s``) and its log."""


class ResultOut(ResultBase):
    """A DICOM object a job wrote."""

    id: int


class JobDetail(JobOut):
    """A job with its operator steps (every attempt) and its results."""

    worker: str = ""  # who holds or last held its lease (e.g. ``worker-a:1234``)
    steps: list[JobStepOut]
    results: list[ResultOut]


class DeliveryOut(DeliveryBase):
    """An outbox row with the result it carries (its kind, SOPInstanceUID and job)."""

    id: int
    job_id: int
    kind: str
    sop_instance_uid: str


class AuditMessageOut(AuditMessageBase):
    """A DICOM audit message as listed (``radloop audit list``): its row id (the syslog
    ``sequenceId``) and columns; the XML with ``--xml``."""

    id: int
    pending: bool
    xml: str = ""


class TokenOut(ApiTokenBase):
    """An API token as listed: never the token itself nor its hash."""

    id: int
    active: bool


class TokenCreated(TokenOut):
    """A token just made: ``token`` is shown this once (only its hash is stored)."""

    token: str


class PullOut(PulledStudyBase):
    """A study found on a pull source and how retrieving it went."""

    id: int


class CursorOut(PollCursorBase):
    """Where polling of a source stands."""


class ReviewOut(ReviewBase):
    """A review decision with the volume change it made (final − AI mask, mL; none if rejected)."""

    id: int
    volume_change_ml: float | None


class _Out(BaseModel):
    """A read model that is no table row."""

    model_config = ConfigDict(extra="forbid")


class SourceOut(_Out):
    """A configured pull source (no credentials), its polling settings and cursor."""

    name: str
    kind: str
    address: str
    listener_ae_title: str
    retrieve: str
    poll: PollSettings
    cursor: CursorOut | None


class PollOut(_Out):
    """What one poll of a source found, skipped (already pulled) and retrieved."""

    source: str
    found: int
    skipped: int
    retrieved: list[PullOut]


class OperatorOut(_Out):
    """One operator of a pipeline: its id in the pipeline and the registered operator it uses."""

    id: str
    use: str


class PipelineOut(_Out):
    """A loaded pipeline: match rules (as in its file), operators in order, destinations."""

    name: str
    version: str
    description: str
    priority: str
    match: dict[str, JsonValue]
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


class Health(_Out):
    """Liveness and database reachability."""

    status: str = PydanticField(description="ok, or degraded when the database cannot be reached")
    database: str
    version: str


class WorklistItemOut(_Out):
    """An AI SEG result nobody has decided on yet, with its job's pipeline, study and series."""

    result_id: int
    created_at: datetime
    pipeline: str
    pipeline_version: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    patient_name: str
    study_date: str
    series_description: str
    modality: str


# --------------------------------------------------------------------------- operator console


class StudyPage(_Out):
    """One page of a study search: the studies (newest first) and how many match in all."""

    items: list[StudyOut]
    total: int
    offset: int
    limit: int


class JobPage(_Out):
    """One page of the job queue (newest first) and how many jobs match in all."""

    items: list[JobOut]
    total: int
    offset: int
    limit: int


class DeliveryPage(_Out):
    """One page of the outbox (newest first) and how many deliveries match in all."""

    items: list[DeliveryOut]
    total: int
    offset: int
    limit: int


class DestinationStatusOut(_Out):
    """A configured destination and what its outbox rows say: down when its pending deliveries
    failed their last attempt (``last_error``)."""

    name: str
    kind: str
    pending: int
    failed: int
    sent: int
    down: bool
    last_error: str


class BucketOut(_Out):
    """Counts in one time bucket of the overview's charts (``start`` inclusive, UTC)."""

    start: datetime
    instances: int
    series_completed: int
    jobs_succeeded: int
    jobs_failed: int
    deliveries_sent: int


class AlertOut(_Out):
    """Something a person should look at: ``kind`` (failed-jobs, failed-deliveries,
    destination-down, disk, triton), a sentence, and where to look in the console."""

    kind: str
    message: str
    link: str


class OverviewOut(_Out):
    """The console's overview over the last ``window`` (hour or day): totals in the window,
    current queue and outbox states, per-bucket counts and the alerts."""

    window: str
    since: datetime
    instances_received: int
    series_completed: int
    jobs_by_state: dict[str, int]
    jobs_finished: dict[str, int]
    deliveries_by_state: dict[str, int]
    buckets: list[BucketOut]
    destinations: list[DestinationStatusOut]
    alerts: list[AlertOut]


class GraphNodeOut(_Out):
    """An operator of a pipeline file and what feeds each of its inputs (``op.output`` or ``input.x``)."""

    id: str
    use: str
    inputs: dict[str, str]


class PipelineFileOut(_Out):
    """A pipeline file on disk, validated now: its name and operator graph when valid, else the
    error with the file, line and field it names."""

    file: str
    text: str
    valid: bool
    name: str
    version: str
    loaded: bool
    error: str
    line: int | None
    field: str
    operators: list[GraphNodeOut]
