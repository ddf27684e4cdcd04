"""Routing: a completed series → the pipelines whose match rules accept it → queued jobs.

A series that no pipeline accepts is marked ``unmatched`` with a note that says, per pipeline,
which rule failed (e.g. ``brain-extraction: Modality CT not in [MR]``): a visible, explained
non-match rather than a silent drop.
"""

from __future__ import annotations

import logging

from sqlmodel import Session, select

from radloop.core.models import Job, Priority, RoutingStatus, Series, Study
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog

log = logging.getLogger(__name__)


def route_series(session: Session, series: Series, settings: Settings, catalog: PipelineCatalog) -> list[Job]:
    """Create the jobs for a just-completed series (idempotent per series revision)."""
    listener = settings.listener(series.called_ae) if series.called_ae else None
    names = listener.pipelines if listener and listener.pipelines else catalog.names()
    study = session.get(Study, series.study_id)
    jobs: list[Job] = []
    notes: list[str] = []
    for name in names:
        if name not in catalog:
            notes.append(f"{name}: no such pipeline is loaded")
            continue
        pipeline = catalog.get(name)
        why_not = pipeline.spec.match.explain_mismatch(series)
        if why_not:
            notes.append(f"{name}: {why_not}")
            continue
        jobs.append(
            _queue_job(session, series, study, name, pipeline.spec.version, pipeline.spec.priority, settings)
        )
        notes.append(f"{name}: matched")
    series.routing_status = RoutingStatus.routed if jobs else RoutingStatus.unmatched
    series.routing_note = "; ".join(notes) if notes else "no pipeline configured for this AE title"
    session.add(series)
    if not jobs:
        log.warning(
            "series %s (AE %s) matched no pipeline: %s", series.id, series.called_ae, series.routing_note
        )
    return jobs


def _queue_job(
    session: Session,
    series: Series,
    study: Study | None,
    pipeline: str,
    version: str,
    priority: Priority,
    settings: Settings,
) -> Job:
    key = f"{pipeline}:{series.series_instance_uid}:{series.revision}"
    existing = session.exec(select(Job).where(Job.idempotency_key == key)).first()
    if existing is not None:
        return existing
    job = Job(
        pipeline=pipeline,
        pipeline_version=version,
        series_id=series.id,  # type: ignore[arg-type]
        study_instance_uid=study.study_instance_uid if study else "",
        series_instance_uid=series.series_instance_uid,
        series_revision=series.revision,
        idempotency_key=key,
        priority=priority,
        priority_rank=priority.rank,
        max_attempts=settings.workers.max_attempts,
    )
    session.add(job)
    session.flush()
    log.info("job %s queued: pipeline %s for series %s", job.id, pipeline, series.id)
    return job
