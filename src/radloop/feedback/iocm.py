"""IOCM rejection notes: hide a rejected AI result in a PACS that implements IHE IOCM.

Optional (``review.iocm_rejection_notes``, off by default). When a radiologist rejects an AI
result, radloop can also send a Key Object Selection document titled (113001, DCM, "Rejected
for Quality Reasons") that references the AI SEG and the job's measurement SRs; an Image
Manager that implements IHE Imaging Object Change Management then hides (or deletes) them. The
assessment SR (:mod:`radloop.feedback.assessments`) is sent either way and is not referenced,
so the record of the decision stays visible.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlmodel import Session

from radloop.core.models import Result, Review, ReviewDecision
from radloop.core.settings import Settings
from radloop.core.uids import derived_uid
from radloop.feedback.assessments import job_reports, result_header, result_row
from radloop.feedback.derived import person_name, queue_like, store_derived

logger = logging.getLogger(__name__)

REJECTION_NOTE_KIND = "KO"
REJECTION_NOTE_SERIES_NUMBER = 9921


def store_rejection_note(settings: Settings, session: Session, review: Review) -> Result:
    """Write the rejection KOS of a rejected ``review`` into the store, add its row and deliveries."""
    if review.decision != ReviewDecision.rejected or review.id is None:
        raise ValueError("store_rejection_note: needs a flushed review row that rejects its result")
    ai_result = result_row(session, review.result_id)
    rejected = [ai_result, *job_reports(session, ai_result)]
    headers = [result_header(settings, r) for r in rejected]
    series_uid = derived_uid("iocm-rejection-series", ai_result.sop_instance_uid, str(review.id))
    sop_uid = derived_uid("iocm-rejection", ai_result.sop_instance_uid, str(review.id))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(review.reviewer)
        ),
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=headers,
        content=hd.ko.KeyObjectSelection(
            document_title=codes.DCM.RejectedForQualityReasons,
            referenced_objects=headers,
            observer_person_context=observer,
            description=review.reason[:1024] or None,
        ),
        series_instance_uid=series_uid,
        series_number=REJECTION_NOTE_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="radloop",
    )

    def write(staging: Path) -> Path:
        kos.save_as(staging / "kos.dcm")
        return staging / "kos.dcm"

    result = store_derived(
        settings,
        session,
        ai_result,
        write,
        staging=settings.data_dir / "tmp" / f"rejection-{sop_uid}",
        kind=REJECTION_NOTE_KIND,
        sop_class_uid=str(KeyObjectSelectionDocumentStorage),
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    queue_like(settings, session, ai_result, result)
    logger.info("stored IOCM rejection note (result %s) of review %s", result.id, review.id)
    return result
