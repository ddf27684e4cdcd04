"""Routing: a completed series → the pipelines whose match rules accept it → queued jobs.

A series that no pipeline accepts is marked ``unmatched`` with a note that says, per pipeline,
which rule failed (e.g. ``brain-extraction: Modality CT not in [MR]``): a visible, explained
non-match rather than a silent drop. Study-level pipelines (``trigger: study``) are evaluated on
the whole study instead (:mod:`.study_routing`); a study retrieved as a prior is not routed.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel import Session, select

from radloop.connector.study_routing import is_prior_study, route_study
from radloop.core.models import Job, Priority, RoutingStatus, Series, Study
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog

log = logging.getLogger(__name__)


def route_series(session: Session, series: Series, settings: Settings, catalog: PipelineCatalog) -> list[Job]:
    """Create the jobs for a just-completed series (idempotent per series revision)."""
    listener = settings.listener(series.called_ae) if series.called_ae else None
    names = listener.pipelines if listener and listener.pipelines else catalog.names()
    study = session.get(Study, series.study_id)
    if study is not None and is_prior_study(session, study.study_instance_uid):
        series.routing_status = RoutingStatus.routed
        series.routing_note = "retrieved as a prior for a study-level job; not routed"
        session.add(series)
        return []
    jobs: list[Job] = []
    notes: list[str] = []
    taken_by_study = False  # an input of a study-level pipeline takes this series
    for name in names:
        if name not in catalog:
            notes.append(f"{name}: no such pipeline is loaded")
            continue
        pipeline = catalog.get(name)
        if pipeline.spec.trigger == "study":
            taken = [
                n for n, r in pipeline.spec.series_inputs().items() if r.explain_mismatch(series) is None
            ]
            if study is not None and taken:
                taken_by_study = True
                job = route_study(session, study, pipeline, settings)
                jobs += [job] if job is not None else []
                notes.append(f"{name}: study-level input {', '.join(taken)}")
            else:
                notes.append(f"{name}: no study-level input takes this series")
            continue
        why_not = pipeline.spec.match.explain_mismatch(series)
        if why_not:
            notes.append(f"{name}: {why_not}")
            continue
        jobs.append(
            _queue_job(session, series, study, name, pipeline.spec.version, pipeline.spec.priority, settings)
        )
        notes.append(f"{name}: matched")
    series.routing_status = RoutingStatus.routed if jobs or taken_by_study else RoutingStatus.unmatched
    series.routing_note = "; ".join(notes) if notes else "no pipeline configured for this AE title"
    session.add(series)
    if not jobs:
        log.warning(
            "series %s (AE %s) matched no pipeline: %s", series.id, series.called_ae, series.routing_note
        )
    return jobs


def request_pipeline(
    session: Session,
    series: Series,
    settings: Settings,
    catalog: PipelineCatalog,
    pipeline: str,
    *,
    request_key: str,
    priority: Priority | None = None,
    not_before: datetime | None = None,
) -> Job | str:
    """A job for ``pipeline`` on a complete series because a client asked for it (a UPS workitem).

    The listener's pipeline list does not apply; the pipeline's match rules do: returns why not
    (e.g. ``Modality CT not in [MR]``) instead of a job when they refuse the series. One job per
    ``request_key`` and series revision; ``not_before`` holds it in the queue until then.
    """
    if pipeline not in catalog:
        return f"no such pipeline is loaded: {pipeline}"
    spec = catalog.get(pipeline).spec
    why_not = spec.match.explain_mismatch(series)
    if why_not:
        return why_not
    study = session.get(Study, series.study_id)
    key = f"{pipeline}:{series.series_instance_uid}:{series.revision}:{request_key}"
    chosen = priority or spec.priority
    return _queue_job(session, series, study, pipeline, spec.version, chosen, settings, key, not_before)


def _queue_job(
    session: Session,
    series: Series,
    study: Study | None,
    pipeline: str,
    version: str,
    priority: Priority,
    settings: Settings,
    key: str = "",
    not_before: datetime | None = None,
) -> Job:
    key = key or f"{pipeline}:{series.series_instance_uid}:{series.revision}"
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
    if not_before is not None:
        job.next_attempt_at = not_before
    session.add(job)
    session.flush()
    log.info("job %s queued: pipeline %s for series %s", job.id, pipeline, series.id)
    return job
