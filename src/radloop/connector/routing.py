"""Routing: a completed series → the pipelines whose match rules accept it → queued jobs.

A series that no pipeline accepts is marked ``unmatched`` with a note that says, per pipeline,
which rule failed (e.g. ``brain-extraction: Modality CT not in [MR]``): a visible, explained
non-match rather than a silent drop.
"""

from __future__ import annotations

import logging
import re

from sqlmodel import Session, select

from radloop.core.models import Job, Priority, RoutingStatus, Series, Study
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.spec import MatchRules

log = logging.getLogger(__name__)


def explain_mismatch(rules: MatchRules, series: Series) -> str | None:
    """None if ``series`` satisfies every rule, else the first rule it breaks, in words."""
    if rules.modality and series.modality not in rules.modality:
        return f"Modality {series.modality or '(none)'} not in {rules.modality}"
    if rules.sop_class_uid and series.sop_class_uid not in rules.sop_class_uid:
        return f"SOPClassUID {series.sop_class_uid} not in {rules.sop_class_uid}"
    if rules.series_description and not re.search(rules.series_description, series.series_description):
        return f"SeriesDescription {series.series_description!r} does not match /{rules.series_description}/"
    if rules.called_ae and series.called_ae not in rules.called_ae:
        return f"called AE {series.called_ae} not in {rules.called_ae}"
    if rules.calling_ae and series.calling_ae not in rules.calling_ae:
        return f"calling AE {series.calling_ae} not in {rules.calling_ae}"
    if series.instance_count < rules.min_instances:
        return f"{series.instance_count} instances, fewer than the {rules.min_instances} required"
    return None


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
        why_not = explain_mismatch(pipeline.spec.match, series)
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
