"""Pulling studies from a PACS: one-shot (``radloop pull``, ``POST /api/v1/pulls``) and polling.

State is in the database, so it survives restarts and is shared by every process:

* ``pulled_study``: one row per (source, study) ever found: ``retrieving`` → ``done`` | ``failed``,
  with the number of retrievals and instances. Polling skips studies that are ``done``, so a
  study is never fetched twice by polling; a failed one is tried again on the next poll. A manual
  pull always retrieves (instances already held are idempotent duplicates: no new jobs).
* ``poll_cursor``: per source, the StudyDate the next poll matches from (the date the last
  successful poll started, less ``overlap_days``), and the count and time of polls.

Retrieved studies are routed like pushed ones: they arrive on the source's
``listener_ae_title``, whose pipelines and completion rules apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from radloop.connector.ingest import IngestSession, SeriesCallback
from radloop.connector.pull.sources import Retriever, SessionFactory, StudyMatch, StudyQuery, retriever_for
from radloop.connector.store import InstanceStore
from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError, PullError, RequestError
from radloop.core.models import PollCursor, PulledStudy, PullState, utcnow
from radloop.core.settings import DicomwebSource, DimseSource, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollReport:
    """What one poll found and retrieved."""

    source: str
    found: int
    retrieved: list[PulledStudy]
    skipped: int


def local_today() -> date:
    """Today in the server's local time zone (StudyDate is a local date)."""
    return datetime.now().astimezone().date()


def dicom_date(day: date) -> str:
    return day.strftime("%Y%m%d")


class Puller:
    """Finds and retrieves studies from the configured sources, keeping the pull state."""

    def __init__(
        self, settings: Settings, engine: Engine, store: InstanceStore, on_end: SeriesCallback
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.on_end = on_end

    def source(self, name: str) -> DicomwebSource | DimseSource:
        """The configured pull source ``name``; :class:`NotFoundError` if there is none."""
        return self._source(name)

    def retrieve_prior(
        self, source: DicomwebSource | DimseSource, retriever: Retriever, match: StudyMatch
    ) -> PulledStudy:
        """Retrieve ``match`` as a prior for a study-level job: recorded with trigger ``prior``, so
        routing leaves its series alone (they are inputs of that job, not new work)."""
        return self._retrieve(source, retriever, match, "prior")

    def _source(self, name: str) -> DicomwebSource | DimseSource:
        for src in self.settings.sources:
            if src.name == name:
                return src
        raise NotFoundError(
            f"no pull source named {name!r} (configured: {[s.name for s in self.settings.sources]})"
        )

    def pull(
        self, source_name: str, *, accession_number: str = "", study_instance_uid: str = ""
    ) -> list[PulledStudy]:
        """Retrieve the studies with this accession number or UID now; :class:`NotFoundError` if none."""
        if not accession_number and not study_instance_uid:
            raise RequestError("say which study to pull: an accession number or a StudyInstanceUID")
        source = self._source(source_name)
        retriever = retriever_for(source)
        query = StudyQuery(study_instance_uid=study_instance_uid, accession_number=accession_number)
        matches = retriever.find(query)
        if not matches:
            raise NotFoundError(f"source {source.name} has no study matching {query.keys()}")
        return [self._retrieve(source, retriever, m, "manual") for m in matches]

    def poll(self, source_name: str) -> PollReport:
        """One poll: search with the source's filter from the cursor's date, retrieve what is new."""
        source = self._source(source_name)
        cfg = source.poll
        started = local_today()
        cursor = self._cursor(source.name)
        retriever = retriever_for(source)
        try:
            matches = self._find_all(retriever, source, cursor)
        except PullError as e:
            self._record_poll(source.name, error=str(e), since=None)
            raise
        done = self._done_uids(source.name, [m.study_instance_uid for m in matches])
        todo = [m for m in matches if m.study_instance_uid not in done][: cfg.max_studies]
        retrieved = [self._retrieve(source, retriever, m, "poll") for m in todo]
        complete = len(todo) == len(matches) - len(done)
        self._record_poll(source.name, error="", since=dicom_date(started) if complete else None)
        if todo:
            log.info("poll of %s: %d found, %d new retrieved", source.name, len(matches), len(retrieved))
        return PollReport(source.name, len(matches), retrieved, len(done))

    def _find_all(
        self, retriever: Retriever, source: DicomwebSource | DimseSource, cursor: PollCursor
    ) -> list[StudyMatch]:
        cfg = source.poll
        date_range = ""
        if cfg.since_last_poll:
            since = (
                datetime.strptime(cursor.since_date, "%Y%m%d").date()
                if cursor.since_date
                else local_today() - timedelta(days=cfg.initial_lookback_days)
            )
            date_range = f"{dicom_date(since - timedelta(days=cfg.overlap_days))}-"
        filters = tuple(sorted(cfg.filters.items()))
        found: dict[str, StudyMatch] = {}
        for modality in cfg.modalities or [""]:
            query = StudyQuery(study_date=date_range, modality=modality, filters=filters)
            for m in retriever.find(query):
                found.setdefault(m.study_instance_uid, m)
        return list(found.values())

    def _session(self, source: DicomwebSource | DimseSource) -> SessionFactory:
        def make(calling_ae: str) -> IngestSession:
            return IngestSession(self.store, self.on_end, source.listener_ae_title, calling_ae)

        return make

    def _retrieve(
        self, source: DicomwebSource | DimseSource, retriever: Retriever, match: StudyMatch, trigger: str
    ) -> PulledStudy:
        self._mark_retrieving(source.name, match, trigger)
        try:
            outcome = retriever.retrieve(match, self._session(source))
        except PullError as e:
            log.error("pull of study %s from %s failed: %s", match.study_instance_uid, source.name, e)
            return self._mark_finished(source.name, match, PullState.failed, 0, 0, str(e))
        error = f"{outcome.failed} instance(s) could not be retrieved" if outcome.failed else ""
        if outcome.completed == 0 and not outcome.failed:
            error = "the source sent no instance"
        state = PullState.failed if error else PullState.done
        log.info(
            "pulled study %s from %s (%s): %d instance(s), %d failed",
            match.study_instance_uid,
            source.name,
            trigger,
            outcome.completed,
            outcome.failed,
        )
        return self._mark_finished(source.name, match, state, outcome.completed, outcome.failed, error)

    # -- state rows --------------------------------------------------------------------
    def _mark_retrieving(self, source: str, match: StudyMatch, trigger: str) -> None:
        try:
            self._upsert_retrieving(source, match, trigger)
        except IntegrityError:  # another process inserted the row a moment ago
            self._upsert_retrieving(source, match, trigger)

    def _upsert_retrieving(self, source: str, match: StudyMatch, trigger: str) -> None:
        with session_scope(self.engine) as s:
            row = s.exec(
                select(PulledStudy).where(
                    PulledStudy.source == source, PulledStudy.study_instance_uid == match.study_instance_uid
                )
            ).first()
            if row is None:
                row = PulledStudy(source=source, study_instance_uid=match.study_instance_uid)
            row.accession_number, row.study_date = match.accession_number, match.study_date
            row.trigger, row.state, row.error = trigger, PullState.retrieving, ""
            row.retrievals += 1
            s.add(row)

    def _mark_finished(
        self, source: str, match: StudyMatch, state: PullState, completed: int, failed: int, error: str
    ) -> PulledStudy:
        with session_scope(self.engine) as s:
            row = s.exec(
                select(PulledStudy).where(
                    PulledStudy.source == source, PulledStudy.study_instance_uid == match.study_instance_uid
                )
            ).one()
            row.state, row.instances, row.failed_instances, row.error = state, completed, failed, error
            row.retrieved_at = utcnow()
            s.add(row)
            return row

    def _done_uids(self, source: str, uids: list[str]) -> set[str]:
        with session_scope(self.engine) as s:
            rows = s.exec(
                select(PulledStudy.study_instance_uid).where(
                    PulledStudy.source == source,
                    PulledStudy.state == PullState.done,
                    col(PulledStudy.study_instance_uid).in_(uids),
                )
            ).all()
            return set(rows)

    def _cursor(self, source: str) -> PollCursor:
        with session_scope(self.engine) as s:
            row = s.exec(select(PollCursor).where(PollCursor.source == source)).first()
            return row if row is not None else PollCursor(source=source)

    def _record_poll(self, source: str, *, error: str, since: str | None) -> None:
        with session_scope(self.engine) as s:
            row = s.exec(select(PollCursor).where(PollCursor.source == source)).first() or PollCursor(
                source=source
            )
            now = utcnow()
            row.polls += 1
            row.last_poll_at = now
            row.last_error = error
            if not error:
                row.last_success_at = now
            if since is not None:
                row.since_date = since
            s.add(row)
