"""Production vs shadow over time: how a shadow model version would have done on the series it ran on.

A version staged ``shadow`` segments every series its model runs on beside production
(:mod:`radloop.pipelines.shadow`); its SEG is stored in the same job as the production SEG and
never delivered. Once a radiologist has decided on the production SEG, the *final* mask is known:
the production mask itself when accepted, the edited SEG when edited (a rejection leaves none).
For each series both versions ran on, this module measures

* ``production_dice``: Dice of the production mask vs the final mask;
* ``shadow_dice``: Dice of the shadow mask vs the same final mask;
* ``agreement``: Dice of the shadow mask vs the production mask (known without any review),

and groups them per production model version, shadow version and period (day, ISO week or month
of the production result), so the quality page can plot whether the shadow would have done
better on this hospital's own reviewed cases. The means of ``production_dice`` and
``shadow_dice`` are over the same cases (those with a final mask), so they compare like with like.

Masks are compared frame by frame through each SEG's references to its source frames (every
SEG of a job is on the grid of the same series), as "any segment" masks, without loading the
source images. Per-case numbers are cached by file (path, time and size), so a page reload reads
no SEG twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from radloop.core.db import session_scope
from radloop.core.errors import InputDataError
from radloop.core.models import Result, Review, ReviewDecision
from radloop.feedback.decisions import REVIEWABLE_KIND
from radloop.feedback.quality import Period, period_start, periods_as_dict
from radloop.pipelines.shadow import SHADOW_KIND

logger = logging.getLogger(__name__)

FrameKey = tuple[str, int]  # (referenced SOP Instance UID, referenced frame number)


@dataclass(frozen=True)
class ShadowCase:
    """One series a shadow version ran on beside production, with its decision (if any)."""

    production_result_id: int
    shadow_result_id: int
    created_at: datetime
    decision: str | None
    production_dice: float | None
    shadow_dice: float | None
    agreement: float | None
    error: str = ""


@dataclass(frozen=True)
class ShadowPoint:
    """The cases of one period: how many, how many have a final mask, and the mean Dices."""

    period_start: date
    cases: int
    with_final: int
    production_dice: float | None
    shadow_dice: float | None
    agreement: float | None
    unreadable: int = 0


@dataclass(frozen=True)
class ShadowQuality:
    """Production vs one shadow version of a model: overall and per period."""

    model_name: str
    production_version: str
    shadow_version: str
    overall: ShadowPoint
    points: list[ShadowPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (dates as ISO strings)."""
        return periods_as_dict(self)


def shadow_quality(
    engine: Engine, data_dir: Path, *, period: Period = "week", since: datetime | None = None
) -> list[ShadowQuality]:
    """Production vs shadow per model, production version and shadow version (results since ``since``)."""
    groups: dict[tuple[str, str, str], list[ShadowCase]] = defaultdict(list)
    for key, case in _cases(engine, data_dir, since):
        groups[key].append(case)
    return [
        _quality(name, production, shadow, cases, period)
        for (name, production, shadow), cases in sorted(groups.items())
    ]


def _cases(
    engine: Engine, data_dir: Path, since: datetime | None
) -> list[tuple[tuple[str, str, str], ShadowCase]]:
    """Every shadow SEG with the production SEG of its job and the latest decision on that SEG."""
    with session_scope(engine) as s:
        query = select(Result).where(Result.kind == SHADOW_KIND).order_by(col(Result.id))
        if since is not None:
            query = query.where(Result.created_at >= since)
        shadows = list(s.exec(query).all())
        jobs = {r.job_id for r in shadows}
        edited_ids = {
            int(i)
            for i in s.exec(select(Review.edited_result_id).where(col(Review.edited_result_id).is_not(None)))
            if i is not None
        }
        productions: dict[int, Result] = {}
        for r in s.exec(
            select(Result)
            .where(col(Result.job_id).in_(jobs), Result.kind == REVIEWABLE_KIND)
            .order_by(col(Result.id))
        ).all():
            if r.id not in edited_ids:
                productions.setdefault(r.job_id, r)
        latest: dict[int, Review] = {}
        production_ids = [int(r.id or 0) for r in productions.values()]
        for review in s.exec(
            select(Review).where(col(Review.result_id).in_(production_ids)).order_by(col(Review.id))
        ).all():
            latest[review.result_id] = review  # the newest decision counts
        finals = {
            int(r.id or 0): r.path
            for r in s.exec(
                select(Result).where(
                    col(Result.id).in_([v.edited_result_id for v in latest.values() if v.edited_result_id])
                )
            ).all()
        }
    out = []
    for shadow in shadows:
        production = productions.get(shadow.job_id)
        if production is None:
            continue  # a shadow whose production SEG is gone: nothing to compare with
        decided = latest.get(int(production.id or 0))
        final: Path | None = None
        if decided is not None and decided.decision == ReviewDecision.edited and decided.edited_result_id:
            edited_path = finals.get(decided.edited_result_id)
            final = data_dir / edited_path if edited_path else None
        out.append(_case(data_dir, shadow, production, decided, final))
    return out


def _case(
    data_dir: Path, shadow: Result, production: Result, review: Review | None, final: Path | None
) -> tuple[tuple[str, str, str], ShadowCase]:
    decision = review.decision.value if review is not None else None
    try:
        name, production_version, shadow_version, numbers = _measure(
            _file_key(data_dir / production.path),
            _file_key(data_dir / shadow.path),
            _file_key(final) if final is not None else None,
        )
    except (InputDataError, InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as e:
        logger.warning("shadow result %s cannot be compared: %s", shadow.id, e)
        unreadable = ShadowCase(
            int(production.id or 0),
            int(shadow.id or 0),
            production.created_at,
            decision,
            None,
            None,
            None,
            str(e),
        )
        return ("", "", ""), unreadable
    agreement, shadow_vs_edit, production_vs_edit = numbers
    production_dice = shadow_dice = None
    if decision == ReviewDecision.accepted.value:
        production_dice, shadow_dice = 1.0, agreement  # the final mask is the production mask
    elif decision == ReviewDecision.edited.value and shadow_vs_edit is not None:
        production_dice, shadow_dice = production_vs_edit, shadow_vs_edit
    case = ShadowCase(
        production_result_id=int(production.id or 0),
        shadow_result_id=int(shadow.id or 0),
        created_at=production.created_at,
        decision=decision,
        production_dice=production_dice,
        shadow_dice=shadow_dice,
        agreement=agreement,
    )
    return (name, production_version, shadow_version), case


FileKey = tuple[str, int, int]


def _file_key(path: Path) -> FileKey:
    """A file as a cache key: its path, modification time and size (a rewritten SEG is new)."""
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4096)
def _measure(
    production: FileKey, shadow: FileKey, final: FileKey | None
) -> tuple[str, str, str, tuple[float, float | None, float | None]]:
    """Model name, production and shadow versions; Dice shadow–production, shadow–final, production–final."""
    production_ds, shadow_ds = _read(production[0]), _read(shadow[0])
    production_masks, shadow_masks = source_frame_masks(production_ds), source_frame_masks(shadow_ds)
    shadow_vs_final = production_vs_final = None
    if final is not None:
        final_masks = source_frame_masks(_read(final[0]))
        shadow_vs_final = frame_dice(shadow_masks, final_masks)
        production_vs_final = frame_dice(production_masks, final_masks)
    name, production_version = algorithm_of(production_ds)
    shadow_name, shadow_version = algorithm_of(shadow_ds)
    dices = (frame_dice(shadow_masks, production_masks), shadow_vs_final, production_vs_final)
    return name or shadow_name, production_version, shadow_version, dices


def _read(path: str) -> Dataset:
    ds = pydicom.dcmread(path)
    if "SegmentSequence" not in ds or "PerFrameFunctionalGroupsSequence" not in ds:
        raise InputDataError(f"{Path(path).name} is not a DICOM Segmentation")
    return ds


def algorithm_of(seg: Dataset) -> tuple[str, str]:
    """Name and version of the algorithm that made a SEG (its first segment's identification)."""
    first = seg.SegmentSequence[0]
    identification = first.get("SegmentationAlgorithmIdentificationSequence") or []
    if identification:
        item = identification[0]
        return str(item.get("AlgorithmName", "") or ""), str(item.get("AlgorithmVersion", "") or "")
    return str(first.get("SegmentAlgorithmName", "") or ""), ""


def source_frame_masks(seg: Dataset) -> dict[FrameKey, npt.NDArray[np.bool_]]:
    """A SEG as one "any segment" mask per source frame it references (frames it omits are empty).

    BINARY and LABELMAP frames count where non-zero, FRACTIONAL ones from half their maximum."""
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    threshold = 1
    if str(seg.get("SegmentationType", "")) == "FRACTIONAL":
        threshold = max(1, (int(seg.get("MaximumFractionalValue", 255)) + 1) // 2)
    masks: dict[FrameKey, npt.NDArray[np.bool_]] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        try:
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError) as e:
            raise InputDataError(f"SEG frame {index + 1} names no source frame") from e
        key = (str(source.ReferencedSOPInstanceUID), int(source.get("ReferencedFrameNumber", 1) or 1))
        frame = pixels[index] >= threshold
        masks[key] = masks[key] | frame if key in masks else frame
    return masks


def frame_dice(a: dict[FrameKey, npt.NDArray[np.bool_]], b: dict[FrameKey, npt.NDArray[np.bool_]]) -> float:
    """Dice of two SEGs' masks on the same source frames; 1.0 when both are empty."""
    both = total = 0
    for key in a.keys() | b.keys():
        first, second = a.get(key), b.get(key)
        total += int(np.count_nonzero(first)) if first is not None else 0
        total += int(np.count_nonzero(second)) if second is not None else 0
        if first is not None and second is not None:
            if first.shape != second.shape:
                raise InputDataError(f"the SEGs' frames of {key[0]} differ in size")
            both += int(np.count_nonzero(first & second))
    return 1.0 if total == 0 else 2.0 * both / total


def _quality(
    name: str, production: str, shadow: str, cases: list[ShadowCase], period: Period
) -> ShadowQuality:
    by_period: dict[date, list[ShadowCase]] = defaultdict(list)
    for case in cases:
        by_period[period_start(case.created_at, period)].append(case)
    points = [_point(start, group) for start, group in sorted(by_period.items())]
    return ShadowQuality(name, production, shadow, _point(points[0].period_start, cases), points)


def _point(start: date, cases: list[ShadowCase]) -> ShadowPoint:
    final = [c for c in cases if c.production_dice is not None and c.shadow_dice is not None]
    agreements = [c.agreement for c in cases if c.agreement is not None]
    return ShadowPoint(
        period_start=start,
        cases=len(cases),
        with_final=len(final),
        production_dice=_mean([c.production_dice for c in final]),
        shadow_dice=_mean([c.shadow_dice for c in final]),
        agreement=_mean(agreements),
        unreadable=sum(1 for c in cases if c.error),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
