"""Edited masks: a reviewer's final mask becomes a new DICOM SEG ("reviewed and edited").

The edited SEG is a new series in the study of the AI SEG, written with highdicom by the same
writer as AI results (:func:`radloop.pipelines.writers.seg.write_seg`), with
SegmentAlgorithmType SEMIAUTOMATIC (the model's output, corrected by a person), the reviewer as
ContentCreatorName, and the AI SEG among its sources (ReferencedSeriesSequence and, where its
frames match, each frame's DerivationImageSequence). It is stored like any result (a ``result``
row of the AI SEG's job, kind SEG) and, when ``review.deliver_edits`` is on, queued for the
destinations the AI SEG was delivered to.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset
from sqlmodel import Session

from radloop.core.models import Result
from radloop.core.settings import Settings
from radloop.core.uids import new_uid
from radloop.feedback.derived import person_name, queue_like, store_derived
from radloop.pipelines.ports import LabelMap
from radloop.pipelines.writers.seg import write_seg

logger = logging.getLogger(__name__)

EDITED_SUFFIX = " - reviewed and edited"
STAGING_PREFIX = "edited-"
"""Staging folders under ``<data_dir>/tmp``: ``edited-<pid>-<SOPInstanceUID>``."""
EDITED_SERIES_NUMBER_OFFSET = 10
"""The edited SEG's SeriesNumber: the AI SEG's plus this (9901 → 9911)."""


def edited_series_description(ai_description: str) -> str:
    """``<AI SeriesDescription> - reviewed and edited``, cut to the 64 characters LO allows."""
    base = ai_description or "AI segmentation"
    return (base[: 64 - len(EDITED_SUFFIX)] + EDITED_SUFFIX).strip()


def store_edited_seg(
    settings: Settings,
    session: Session,
    ai_result: Result,
    labelmap: LabelMap,
    *,
    ai_seg: Dataset,
    reviewer: str,
) -> Result:
    """Write the edited SEG into the store, add its ``result`` row (and deliveries); returns the row."""
    series_instance_uid, sop_instance_uid = new_uid(), new_uid()
    remove_abandoned_staging(settings.data_dir / "tmp")
    write = partial(
        write_seg,
        labelmap,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=_series_number(ai_seg),
        series_description=edited_series_description(str(ai_seg.get("SeriesDescription", "") or "")),
        algorithm_type="SEMIAUTOMATIC",
        further_source_images=[ai_seg],
        content_creator_name=person_name(reviewer),
    )
    result = store_derived(
        settings,
        session,
        ai_result,
        write,
        staging=settings.data_dir / "tmp" / f"{STAGING_PREFIX}{os.getpid()}-{sop_instance_uid}",
        kind=ai_result.kind,
        sop_class_uid=ai_result.sop_class_uid,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
    )
    if settings.review.deliver_edits:
        queue_like(settings, session, ai_result, result)
    logger.info("stored edited SEG (result %s, from result %s)", result.id, ai_result.id)
    return result


def remove_abandoned_staging(folder: Path) -> list[Path]:
    """Remove the staging folders of saves whose process is gone (killed mid-write); returns them.

    A save stages its SEG in ``edited-<pid>-<SOPInstanceUID>``; the folder of a live process is
    left alone (it may be writing now), one whose process no longer exists is a leftover.
    """
    removed = []
    for staging in folder.glob(f"{STAGING_PREFIX}*") if folder.is_dir() else ():
        pid_text = staging.name[len(STAGING_PREFIX) :].partition("-")[0]
        if pid_text.isdigit() and _process_exists(int(pid_text)):
            continue
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
        logger.warning("removed %s, left by a save that was killed while writing", staging)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _series_number(ai_seg: Dataset) -> int:
    number = int(ai_seg.get("SeriesNumber", 0) or 0)
    return number + EDITED_SERIES_NUMBER_OFFSET if number else 9911
