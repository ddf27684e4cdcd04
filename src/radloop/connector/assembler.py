"""The assembler: decides when a series is complete, then hands it to routing.

A series is complete after a quiet period with no new instance (per listener AE title) or,
where the listener says so, when the association that carried it is released. Completion is a
conditional row update (``open → complete``, revision + 1), so the two triggers never double-route.
After a restart, open series get a fresh quiet period: the sender may be resending.
Each tick also gives up waiting on studies whose study-level pipeline's ``wait_s`` has passed
(:func:`~radloop.connector.study_routing.due_triggers`): they are queued without their optional
inputs or marked ``unmatched``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import col, select

from radloop.connector.routing import route_series
from radloop.connector.study_routing import due_triggers, route_study
from radloop.core import atna
from radloop.core.db import session_scope
from radloop.core.models import Series, SeriesState, Study, utcnow
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.wakeup import Wakeup

log = logging.getLogger(__name__)
DEFAULT_QUIET_PERIOD_S = 10.0


class Assembler:
    """Series completion and routing."""

    def __init__(
        self, settings: Settings, engine: Engine, catalog: PipelineCatalog, jobs_queued: Wakeup | None = None
    ) -> None:
        """``jobs_queued`` is notified after jobs are committed (the runtime's, which its executor awaits)."""
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.jobs_queued = jobs_queued if jobs_queued is not None else Wakeup()

    def resume(self) -> None:
        """At start-up: restart the quiet period of every open series (a sender may be resending)."""
        with session_scope(self.engine) as s:
            s.execute(
                update(Series).where(col(Series.state) == SeriesState.open).values(last_received_at=utcnow())
            )

    def on_association_end(self, series_ids: set[int], called_ae: str) -> None:
        """SCP notification: an association was released after storing into these series."""
        self.audit_received(series_ids, called_ae)
        listener = self.settings.listener(called_ae)
        if listener is None or not listener.complete_on_release:
            return
        for series_id in sorted(series_ids):
            self.complete(series_id, reason="association released")

    def audit_received(self, series_ids: set[int], called_ae: str) -> None:
        """One DICOM Instances Transferred audit message (PS3.15 A.5.3.4) per batch and sender: the
        association, STOW-RS request or retrieve that stored into ``series_ids``."""
        with session_scope(self.engine) as s:
            series = s.exec(select(Series).where(col(Series.id).in_(series_ids))).all()
            by_sender: dict[str, list[str]] = {}
            for x in series:
                study = s.get(Study, x.study_id)
                if study is not None:
                    by_sender.setdefault(x.calling_ae, []).append(study.study_instance_uid)
            for calling_ae, study_uids in sorted(by_sender.items()):
                source = atna.dicom_peer(calling_ae, requestor=True, role=atna.ROLE_SOURCE)
                destination = atna.radloop_process([called_ae], role=atna.ROLE_DESTINATION)
                message = atna.instances_transferred(
                    s, atna.EventAction.create, source, destination, study_uids
                )
                atna.record(s, self.settings.audit, message)

    def tick(self) -> int:
        """Complete every open series whose quiet period has passed; returns how many."""
        now = utcnow()
        with session_scope(self.engine) as s:
            open_series = s.exec(select(Series).where(Series.state == SeriesState.open)).all()
        due = [x.id for x in open_series if x.id is not None and x.last_received_at + self._quiet(x) <= now]
        completed = sum(self.complete(sid, reason="quiet period elapsed") for sid in due)
        self._finish_waiting_studies()
        return completed

    def _finish_waiting_studies(self) -> None:
        """Study-level pipelines whose ``wait_s`` passed: queue the job or mark the study unmatched."""
        queued = False
        with session_scope(self.engine) as s:
            for trigger in due_triggers(s):
                study = s.get(Study, trigger.study_id)
                if study is None or trigger.pipeline not in self.catalog:
                    continue
                pipeline = self.catalog.get(trigger.pipeline)
                job = route_study(s, study, pipeline, self.settings, deadline_passed=True)
                queued = queued or job is not None
        if queued:
            self.jobs_queued.notify()  # committed: the dispatcher claims them now

    def _quiet(self, series: Series) -> timedelta:
        listener = self.settings.listener(series.called_ae) if series.called_ae else None
        return timedelta(seconds=listener.quiet_period_s if listener else DEFAULT_QUIET_PERIOD_S)

    def complete(self, series_id: int, *, reason: str) -> bool:
        """Mark one series complete and route it; False if it was not open (already completed)."""
        with session_scope(self.engine) as s:
            res: CursorResult[object] = s.execute(  # type: ignore[assignment]
                update(Series)
                .where(col(Series.id) == series_id, col(Series.state) == SeriesState.open)
                .values(state=SeriesState.complete, revision=Series.revision + 1, completed_at=utcnow())
            )
            if res.rowcount != 1:
                return False
            series = s.get(Series, series_id)
            assert series is not None
            s.refresh(series)
            jobs = route_series(s, series, self.settings, self.catalog)
            log.info(
                "series %s complete (%s, %d instances): %d job(s)",
                series_id,
                reason,
                series.instance_count,
                len(jobs),
            )
        self.jobs_queued.notify()  # committed: the dispatcher claims them now, not at its next poll
        return True
