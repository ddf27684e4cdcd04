"""Study-level routing: a study's completed series → the named inputs of a ``trigger: study`` pipeline.

Each time a series of a study completes (quiet period or association release), every study-level
pipeline of its listener looks at the study again, once no series of it is still open:

* each non-prior input takes, among the study's complete series that satisfy its rules, the one
  with the most instances (or the latest, ``prefer: latest``);
* every input found → one job (idempotency key ``<pipeline>:study:<StudyInstanceUID>``: a series
  arriving later never makes a second job), with one ``job_input`` row per input;
* a required input missing → ``waiting`` until ``wait_s`` after the first evaluation, then
  ``unmatched`` with a note naming each input that found nothing and why each series missed it;
  an optional input missing → the job is queued after ``wait_s`` without it.

The outcome is a ``study_trigger`` row per (study, pipeline). Studies retrieved as priors for a
study-level job are not routed at all (see :func:`is_prior_study`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, col, select

from radloop.core.models import (
    Job,
    JobInput,
    PulledStudy,
    Series,
    SeriesState,
    Study,
    StudyTrigger,
    StudyTriggerState,
    utcnow,
)
from radloop.core.settings import Settings
from radloop.pipelines.spec import InputRule, Pipeline

log = logging.getLogger(__name__)
PRIOR_TRIGGER = "prior"
"""``pulled_study.trigger`` of a study retrieved as a prior: routing leaves it alone."""


@dataclass(frozen=True)
class Selection:
    """What the study offers a pipeline: the series chosen per input, and why others found none."""

    chosen: dict[str, Series]
    missing: dict[str, str]  # input name → why nothing matched
    required_missing: list[str]


def select_inputs(rules: dict[str, InputRule], series: Sequence[Series]) -> Selection:
    """Choose a series per input among ``series`` (complete ones of one study) by the input's rules."""
    chosen: dict[str, Series] = {}
    missing: dict[str, str] = {}
    for name, rule in rules.items():
        fits = [s for s in series if rule.explain_mismatch(s) is None]
        if fits:
            chosen[name] = max(fits, key=lambda s: _preference(rule, s))
            continue
        reasons = [
            f"{s.series_description or s.series_instance_uid!r}: {rule.explain_mismatch(s)}" for s in series
        ]
        missing[name] = "; ".join(reasons) if reasons else "the study has no complete series"
    required_missing = [n for n in missing if rules[n].required]
    return Selection(chosen, missing, required_missing)


def _preference(rule: InputRule, series: Series) -> tuple[float, float]:
    received = series.last_received_at.timestamp()
    if rule.prefer == "latest":
        return (received, float(series.instance_count))
    return (float(series.instance_count), received)


def is_prior_study(session: Session, study_instance_uid: str) -> bool:
    """Whether the study was retrieved as a prior for a study-level job (and so is not routed)."""
    row = session.exec(
        select(PulledStudy.id).where(
            PulledStudy.study_instance_uid == study_instance_uid, PulledStudy.trigger == PRIOR_TRIGGER
        )
    ).first()
    return row is not None


def route_study(
    session: Session, study: Study, pipeline: Pipeline, settings: Settings, *, deadline_passed: bool = False
) -> Job | None:
    """Evaluate ``study`` for the study-level ``pipeline``; the job if one is (or was) queued."""
    trigger = _trigger_row(session, study, pipeline.name)
    if trigger.state == StudyTriggerState.queued and trigger.job_id is not None:
        return session.get(Job, trigger.job_id)
    all_series = session.exec(select(Series).where(Series.study_id == study.id)).all()
    if any(s.state == SeriesState.open for s in all_series) and not deadline_passed:
        return None  # the last series to complete evaluates the study
    complete = [s for s in all_series if s.state == SeriesState.complete]
    selection = select_inputs(pipeline.spec.series_inputs(), complete)
    now = utcnow()
    if trigger.deadline is None:
        trigger.deadline = now + timedelta(seconds=pipeline.spec.wait_s)
    waited = deadline_passed or trigger.deadline <= now
    trigger.updated_at = now
    if selection.required_missing and waited:
        trigger.state = StudyTriggerState.unmatched
        trigger.note = "; ".join(
            f"input {name!r} found nothing ({selection.missing[name]})" for name in selection.required_missing
        )
        log.warning("study %s unmatched by %s: %s", study.id, pipeline.name, trigger.note)
    elif selection.missing and not waited:
        trigger.state = StudyTriggerState.waiting
        trigger.note = f"waiting until {trigger.deadline:%H:%M:%S} UTC for: {', '.join(selection.missing)}"
    else:
        job = _queue_study_job(session, study, pipeline, selection, settings)
        trigger.state, trigger.job_id = StudyTriggerState.queued, job.id
        absent = f"; without optional {', '.join(selection.missing)}" if selection.missing else ""
        trigger.note = f"job {job.id} queued{absent}"
        session.add(trigger)
        return job
    session.add(trigger)
    return None


def due_triggers(session: Session) -> list[StudyTrigger]:
    """Studies still waiting for inputs whose ``wait_s`` has passed."""
    return list(
        session.exec(
            select(StudyTrigger).where(
                StudyTrigger.state == StudyTriggerState.waiting, col(StudyTrigger.deadline) <= utcnow()
            )
        ).all()
    )


def _trigger_row(session: Session, study: Study, pipeline: str) -> StudyTrigger:
    row = session.exec(
        select(StudyTrigger).where(StudyTrigger.study_id == study.id, StudyTrigger.pipeline == pipeline)
    ).first()
    if row is None:
        assert study.id is not None
        row = StudyTrigger(study_id=study.id, pipeline=pipeline, study_instance_uid=study.study_instance_uid)
        session.add(row)
        session.flush()
    return row


def _queue_study_job(
    session: Session, study: Study, pipeline: Pipeline, selection: Selection, settings: Settings
) -> Job:
    key = f"{pipeline.name}:study:{study.study_instance_uid}"
    existing = session.exec(select(Job).where(Job.idempotency_key == key)).first()
    if existing is not None:
        return existing
    primary = selection.chosen[next(n for n, r in pipeline.spec.series_inputs().items() if r.required)]
    spec = pipeline.spec
    job = Job(
        pipeline=pipeline.name,
        pipeline_version=spec.version,
        series_id=primary.id,  # type: ignore[arg-type]
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=primary.series_instance_uid,
        series_revision=primary.revision,
        idempotency_key=key,
        priority=spec.priority,
        priority_rank=spec.priority.rank,
        max_attempts=settings.workers.max_attempts,
    )
    session.add(job)
    session.flush()
    for name, series in selection.chosen.items():
        session.add(
            JobInput(
                job_id=job.id,  # type: ignore[arg-type]
                name=name,
                series_id=series.id,  # type: ignore[arg-type]
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=series.series_instance_uid,
            )
        )
    log.info("job %s queued: study-level pipeline %s for study %s", job.id, pipeline.name, study.id)
    return job
