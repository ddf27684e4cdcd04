"""Per-model quality over time, from the review decisions.

For each model (name and version, as the SEG names them) and each period (day, ISO week or
month of the decision's end time, UTC):

* ``acceptance_rate`` = accepted / all decisions (edited and rejected results are not accepted);
* ``mean_dice_edited`` = mean Dice between AI and final mask over the *edited* results only
  (accepted ones have Dice 1 by definition, rejected ones have no final mask);
* ``mean_abs_volume_change_pct`` = mean |final − AI| / AI volume over the edited results.

Decisions are grouped here rather than in SQL so that the same code runs on SQLite and
PostgreSQL; ``since`` bounds how many rows are read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from radloop.core.db import session_scope
from radloop.core.models import Review, ReviewDecision

Period = Literal["day", "week", "month"]


@dataclass(frozen=True)
class QualityPoint:
    """Decisions on one model's results in one period."""

    period_start: date
    reviews: int
    accepted: int
    edited: int
    rejected: int
    acceptance_rate: float
    mean_dice_edited: float | None
    mean_abs_volume_change_pct: float | None


@dataclass(frozen=True)
class ModelQuality:
    """One model's quality: all its decisions, and per period."""

    model_name: str
    model_version: str
    overall: QualityPoint
    points: list[QualityPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (dates as ISO strings)."""
        return periods_as_dict(self)


def periods_as_dict(quality: Any) -> dict[str, Any]:
    """A quality dataclass (``overall`` and ``points``, each with a ``period_start`` date) as a
    JSON-able dict, dates as ISO strings."""
    out: dict[str, Any] = asdict(quality)
    for point in [out["overall"], *out["points"]]:
        point["period_start"] = point["period_start"].isoformat()
    return out


def period_start(moment: datetime, period: Period) -> date:
    """First day of the period ``moment`` falls in (weeks start on Monday)."""
    day = moment.date()
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def model_quality(
    engine: Engine, *, period: Period = "week", since: datetime | None = None
) -> list[ModelQuality]:
    """Quality of every model with decisions (ended at or after ``since``), by name and version."""
    with session_scope(engine) as s:
        query = select(Review).order_by(col(Review.ended_at))
        if since is not None:
            query = query.where(Review.ended_at >= since)
        reviews = list(s.exec(query).all())
    by_model: dict[tuple[str, str], list[Review]] = defaultdict(list)
    for review in reviews:
        by_model[(review.model_name, review.model_version)].append(review)
    return [_model(name, version, rows, period) for (name, version), rows in sorted(by_model.items())]


def _model(name: str, version: str, rows: list[Review], period: Period) -> ModelQuality:
    by_period: dict[date, list[Review]] = defaultdict(list)
    for review in rows:
        by_period[period_start(review.ended_at, period)].append(review)
    points = [_point(start, group) for start, group in sorted(by_period.items())]
    return ModelQuality(name, version, _point(points[0].period_start, rows), points)


def _point(start: date, rows: Iterable[Review]) -> QualityPoint:
    rows = list(rows)
    counts = {d: sum(1 for r in rows if r.decision == d) for d in ReviewDecision}
    edits = [r for r in rows if r.decision == ReviewDecision.edited]
    dices = [r.dice for r in edits if r.dice is not None]
    changes = [
        100.0 * abs(r.volume_final_ml - r.volume_ai_ml) / r.volume_ai_ml
        for r in edits
        if r.volume_ai_ml and r.volume_final_ml is not None
    ]
    return QualityPoint(
        period_start=start,
        reviews=len(rows),
        accepted=counts[ReviewDecision.accepted],
        edited=counts[ReviewDecision.edited],
        rejected=counts[ReviewDecision.rejected],
        acceptance_rate=counts[ReviewDecision.accepted] / len(rows) if rows else 0.0,
        mean_dice_edited=sum(dices) / len(dices) if dices else None,
        mean_abs_volume_change_pct=sum(changes) / len(changes) if changes else None,
    )
