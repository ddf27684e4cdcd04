"""Prometheus metrics, read from the database at scrape time.

The counts live in the tables (instances, jobs, deliveries, pulls), so every process that can
reach the database reports the same numbers, they survive restarts, and nothing is kept in
module-level counters. Labels carry states and names, never PHI (no UIDs, no patient data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from radloop.core.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    PulledStudy,
    PullState,
    Series,
    Study,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DatabaseCollector(Collector):
    """radloop's counters and gauges, computed from the tables on each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as s:
            yield from _received(s)
            yield _by_state(s, "radloop_jobs", "Jobs by state.", Job.state, list(JobState))
            yield _by_state(
                s, "radloop_deliveries", "Outbox deliveries by state.", Delivery.state, list(DeliveryState)
            )
            yield _delivery_failures(s)
            yield _series_completed(s)
            yield _job_durations(s)
            yield _by_state(
                s,
                "radloop_pulled_studies",
                "Studies found on pull sources, by state.",
                PulledStudy.state,
                list(PullState),
            )


def _count(s: Session, model: type) -> int:
    return int(s.exec(select(func.count()).select_from(model)).one())


def _received(s: Session) -> Iterator[Metric]:
    instances = CounterMetricFamily(
        "radloop_instances_received", "Instances stored (C-STORE, STOW-RS, pulls)."
    )
    instances.add_metric([], _count(s, Instance))
    yield instances
    for name, model, text in (
        ("radloop_studies", Study, "Studies in the index."),
        ("radloop_series", Series, "Series in the index."),
    ):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], _count(s, model))
        yield gauge


def _by_state(s: Session, name: str, text: str, column: object, states: list[object]) -> GaugeMetricFamily:
    query: Any = select(column, func.count()).group_by(column)  # type: ignore[call-overload]
    rows: dict[Any, int] = dict(s.exec(query).all())
    gauge = GaugeMetricFamily(name, text, labels=["state"])
    for state in states:
        gauge.add_metric([str(getattr(state, "value", state))], int(rows.get(state, 0)))
    return gauge


def _delivery_failures(s: Session) -> CounterMetricFamily:
    """Failed delivery attempts per destination: every attempt of a delivery but the one that succeeded."""
    sent = case((col(Delivery.state) == DeliveryState.sent, 1), else_=0)
    rows = s.exec(
        select(Delivery.destination, func.sum(Delivery.attempts), func.sum(sent)).group_by(
            col(Delivery.destination)
        )
    ).all()
    counter = CounterMetricFamily(
        "radloop_delivery_failures", "Failed delivery attempts, per destination.", labels=["destination"]
    )
    for destination, attempts, succeeded in rows:
        counter.add_metric([destination], max(0, int(attempts or 0) - int(succeeded or 0)))
    return counter


def _series_completed(s: Session) -> CounterMetricFamily:
    """Series completed (quiet period or association end), each revision once."""
    counter = CounterMetricFamily("radloop_series_completed", "Series completed (and routed).")
    n = s.exec(select(func.count()).select_from(Series).where(col(Series.completed_at).is_not(None))).one()
    counter.add_metric([], int(n))
    return counter


JOB_DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds (seconds) of the job duration histogram's buckets (``+Inf`` is added)."""


def _job_durations(s: Session) -> HistogramMetricFamily:
    """Run time of finished jobs (last attempt: started → finished), per pipeline and final state."""
    rows = s.exec(
        select(Job.pipeline, Job.state, Job.started_at, Job.finished_at).where(
            col(Job.finished_at).is_not(None),
            col(Job.started_at).is_not(None),
            col(Job.state).in_([JobState.succeeded, JobState.failed]),
        )
    ).all()
    per: dict[tuple[str, str], list[float]] = {}
    for pipeline, state, started, finished in rows:
        if started is None or finished is None:
            continue
        seconds = max(0.0, (finished - started).total_seconds())
        per.setdefault((pipeline, JobState(state).value), []).append(seconds)
    family = HistogramMetricFamily(
        "radloop_job_duration_seconds",
        "Run time of finished jobs (their last attempt), per pipeline and final state.",
        labels=["pipeline", "state"],
    )
    for (pipeline, state), values in sorted(per.items()):
        buckets = [(_bound(b), sum(1 for v in values if v <= b)) for b in JOB_DURATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([pipeline, state], buckets, sum(values))
    return family


def _bound(b: float) -> str:
    return repr(float(b))


def registry_for(engine: Engine) -> CollectorRegistry:
    """A registry holding radloop's collector for ``engine`` (one per app; no global registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
