"""Agreement metrics and per-model quality over time (on a real SQLite database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import Session

from radloop.core import db
from radloop.core.db import session_scope
from radloop.core.errors import RequestError
from radloop.core.models import Job, Result, Review, ReviewDecision, Series, Study
from radloop.core.settings import load_settings
from radloop.feedback.agreement import agreement, dice, unchanged
from radloop.feedback.decisions import Decision
from radloop.feedback.edits import edited_series_description
from radloop.feedback.quality import model_quality, period_start


def test_dice_and_volumes() -> None:
    ai = np.zeros((4, 4, 4), np.uint8)
    ai[:2] = 1  # 32 voxels
    final = ai.copy()
    final[0, 0, :] = 0  # 4 removed
    final[3, 0, :2] = 1  # 2 added
    got = agreement(ai, final, voxel_volume_ml=0.5)
    assert (got.added_voxels, got.removed_voxels) == (2, 4)
    assert got.dice == pytest.approx(2 * 28 / (32 + 30))
    assert (got.volume_ai_ml, got.volume_final_ml, got.volume_change_ml) == (16.0, 15.0, -1.0)
    assert got.volume_change_pct == pytest.approx(-6.25)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert unchanged(12.0).dice == 1.0


def test_edited_description_fits_lo() -> None:
    assert (
        edited_series_description("AI brain mask (deepbet)")
        == "AI brain mask (deepbet) - reviewed and edited"
    )
    assert len(edited_series_description("x" * 64)) == 64


def test_decision_rules() -> None:
    start = datetime.now(UTC)
    with pytest.raises(RequestError, match="reason"):
        Decision(1, "jdoe", ReviewDecision.rejected, start, "m", "1")
    with pytest.raises(ValueError, match="edited_result_id"):
        Decision(1, "jdoe", ReviewDecision.edited, start, "m", "1")


def test_period_start() -> None:
    moment = datetime(2026, 11, 19, 15, 0, tzinfo=UTC)  # a Thursday
    assert str(period_start(moment, "day")) == "2026-11-19"
    assert str(period_start(moment, "week")) == "2026-11-16"
    assert str(period_start(moment, "month")) == "2026-11-01"


def test_quality_per_model_and_week(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path))
    db.upgrade(settings)
    engine = db.make_engine(settings)
    monday = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    with session_scope(engine) as s:
        result_id = _result(s)
        rows = [  # (days after monday, model version, decision, dice)
            (0, "1.0", ReviewDecision.accepted, 1.0),
            (1, "1.0", ReviewDecision.edited, 0.9),
            (2, "1.0", ReviewDecision.rejected, None),
            (7, "1.0", ReviewDecision.accepted, 1.0),
            (8, "1.0", ReviewDecision.edited, 0.8),
            (9, "1.0", ReviewDecision.edited, 0.6),
            (7, "2.0", ReviewDecision.accepted, 1.0),
        ]
        for days, version, decision, d in rows:
            when = monday + timedelta(days=days)
            s.add(
                Review(
                    result_id=result_id,
                    reviewer="jdoe",
                    decision=decision,
                    started_at=when,
                    ended_at=when,
                    model_name="deepbet",
                    model_version=version,
                    dice=d,
                    volume_ai_ml=100.0 if d is not None else None,
                    volume_final_ml=(100.0 + 10 * (1 - d)) if d is not None else None,
                )
            )
    models = model_quality(engine, period="week")
    assert [(m.model_name, m.model_version) for m in models] == [("deepbet", "1.0"), ("deepbet", "2.0")]
    v1 = models[0]
    assert [p.period_start.isoformat() for p in v1.points] == ["2026-11-02", "2026-11-09"]
    first, second = v1.points
    assert (first.reviews, first.accepted, first.edited, first.rejected) == (3, 1, 1, 1)
    assert first.acceptance_rate == pytest.approx(1 / 3)
    assert first.mean_dice_edited == pytest.approx(0.9)
    assert second.mean_dice_edited == pytest.approx(0.7)
    assert second.mean_abs_volume_change_pct == pytest.approx(3.0)
    assert v1.overall.reviews == 6 and v1.overall.acceptance_rate == pytest.approx(2 / 6)
    assert v1.as_dict()["points"][0]["period_start"] == "2026-11-02"
    assert model_quality(engine, since=monday + timedelta(days=7))[0].overall.reviews == 3


def _result(s: Session) -> int:
    study = Study(study_instance_uid="1.2.3")
    s.add(study)
    s.flush()
    series = Series(study_id=study.id, series_instance_uid="1.2.3.4")  # type: ignore[arg-type]
    s.add(series)
    s.flush()
    job = Job(pipeline="p", series_id=series.id, idempotency_key="k")  # type: ignore[arg-type]
    s.add(job)
    s.flush()
    result = Result(job_id=job.id, kind="SEG", sop_instance_uid="1.2.3.4.5", path="x.dcm")  # type: ignore[arg-type]
    s.add(result)
    s.flush()
    return int(result.id)  # type: ignore[arg-type]
