"""Results derived from an AI result by a review (edited SEG, assessment SR, IOCM rejection note):
stored like the job's own results and delivered where the AI result went.

Each is written into a staging folder under ``<data_dir>/tmp``, moved into
``results/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and recorded as a
``result`` row of the AI result's job, in the caller's transaction.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session, select

from radloop.core.errors import ConfigError
from radloop.core.models import Delivery, Result, utcnow
from radloop.core.settings import Settings


def store_derived(
    settings: Settings,
    session: Session,
    ai_result: Result,
    write: Callable[[Path], Path],
    *,
    staging: Path,
    kind: str,
    sop_class_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> Result:
    """Run ``write(staging)`` (it returns the file it wrote), move the file into the results
    tree and add its ``result`` row (flushed, so it has an id). The staging folder is removed
    whatever happens."""
    relative = (
        Path("results") / ai_result.study_instance_uid / series_instance_uid / f"{sop_instance_uid}.dcm"
    )
    try:
        staging.mkdir(parents=True, exist_ok=True)
        written = write(staging)
        target = settings.data_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        written.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = Result(
        job_id=ai_result.job_id,
        kind=kind,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        study_instance_uid=ai_result.study_instance_uid,
        path=str(relative),
        created_at=utcnow(),
    )
    session.add(result)
    session.flush()
    return result


def queue_like(settings: Settings, session: Session, ai_result: Result, derived: Result) -> None:
    """Deliver ``derived`` to every destination the AI result went to that takes its kind.

    An unconfigured destination still gets its row (the outbox then shows the configuration
    error), as for the job's own results."""
    destinations = session.exec(select(Delivery.destination).where(Delivery.result_id == ai_result.id)).all()
    for destination in sorted(set(destinations)):
        try:
            takes = settings.destination(destination).takes(derived.kind)
        except ConfigError:
            takes = True
        if takes:
            session.add(Delivery(result_id=derived.id, destination=destination))  # type: ignore[arg-type]


def person_name(reviewer: str) -> str:
    """The reviewer as a DICOM PN: a user ID without ``^`` becomes a family name (``jdoe^``)."""
    cleaned = reviewer.replace("\\", " ")[:64]
    return cleaned if "^" in cleaned else f"{cleaned}^"
