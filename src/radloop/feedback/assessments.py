"""AI result assessments (IHE AIRA): each review decision becomes a DICOM SR in the source study.

A radiologist's accept / reject / modify of an AI result is written as one Comprehensive SR per
decision, so the PACS that holds the AI result also holds what the radiologist made of it:

* VerificationFlag VERIFIED, the radiologist as Verifying Observer (and as the person observer
  of the content), the time of the decision as Verification DateTime;
* the coded assessment (accepted / rejected / modified) and, when given, the reason as text;
* references to the assessed AI result: its SEG with the segment numbers assessed, and the
  job's measurement SR(s); for a modification, the edited SEG;
* the algorithm whose result it assesses, in the Contributing Equipment Sequence (as every
  radloop result carries it, IHE AIR).

AIRA's codes are not in DICOM yet: the content uses the private ``99RADLOOP`` codes of
:mod:`radloop.pipelines.writers.ihe_codes`, the one table to change when DICOM publishes them.
The SR is stored like any result (a ``result`` row of the AI result's job, kind SR) and queued
in the outbox for every destination the AI result went to that takes SRs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage
from sqlmodel import Session, col, select

from radloop.core.errors import NotFoundError
from radloop.core.models import Result, Review, ReviewDecision
from radloop.core.settings import Settings
from radloop.core.uids import derived_uid
from radloop.feedback.derived import person_name, queue_like, store_derived
from radloop.pipelines.ports import AlgorithmIdentification, Code
from radloop.pipelines.writers import ihe_codes
from radloop.pipelines.writers.equipment import add_contributing_equipment, coded_concept

logger = logging.getLogger(__name__)

ASSESSMENT_KIND = "SR"
"""Result kind of an assessment (destinations filter on it like on any SR)."""
ASSESSMENT_SERIES_NUMBER = 9920
ASSESSMENT_SERIES_DESCRIPTION = "AI result assessment"
VERIFYING_ORGANIZATION = "radloop review"


@dataclass(frozen=True)
class AssessedObject:
    """A DICOM object the assessment references: its header and, for a SEG, the segments."""

    header: Dataset
    segment_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Assessment:
    """What one assessment SR says: who decided what about which objects, made by which model."""

    decision: ReviewDecision
    reviewer: str
    reason: str
    algorithm: AlgorithmIdentification
    assessed: tuple[AssessedObject, ...]
    modified: AssessedObject | None = None

    def __post_init__(self) -> None:
        if not self.assessed:
            raise ValueError("Assessment: assessed must name at least the AI result")
        if (self.decision == ReviewDecision.edited) != (self.modified is not None):
            raise ValueError("Assessment: modified is set exactly when the decision is 'edited'")


def write_assessment(
    assessment: Assessment, out_dir: Path, *, series_instance_uid: str, sop_instance_uid: str
) -> Path:
    """Write ``assessment`` as a verified Comprehensive SR ``<out_dir>/<sop_instance_uid>.dcm``."""
    objects = [*assessment.assessed, *([assessment.modified] if assessment.modified else [])]
    sr = hd.sr.ComprehensiveSR(
        evidence=[o.header for o in objects],
        content=_content(assessment),
        series_instance_uid=series_instance_uid,
        series_number=ASSESSMENT_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="radloop",
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=person_name(assessment.reviewer),
        verifying_organization=VERIFYING_ORGANIZATION,
        series_description=ASSESSMENT_SERIES_DESCRIPTION,
    )
    add_contributing_equipment(sr, assessment.algorithm)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sop_instance_uid}.dcm"
    sr.save_as(path)
    logger.info("wrote assessment SR %s (%s)", path.name, assessment.decision.value)
    return path


def _content(assessment: Assessment) -> hd.sr.ContainerContentItem:
    """The content tree: observer context, the coded decision, the reason, the references."""
    root = hd.sr.ContainerContentItem(name=coded_concept(ihe_codes.ASSESSMENT_DOCUMENT))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(assessment.reviewer)
        ),
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        *observer,
        hd.sr.CodeContentItem(
            name=coded_concept(ihe_codes.ASSESSMENT),
            value=coded_concept(ihe_codes.ASSESSMENT_CODES[assessment.decision.value]),
            relationship_type=contains,
        ),
    ]
    if assessment.reason.strip():
        items.append(
            hd.sr.TextContentItem(
                name=coded_concept(ihe_codes.REJECTION_REASON),
                value=assessment.reason.strip(),
                relationship_type=contains,
            )
        )
    items += [_reference(o, ihe_codes.ASSESSED_RESULT) for o in assessment.assessed]
    if assessment.modified is not None:
        items.append(_reference(assessment.modified, ihe_codes.MODIFIED_RESULT))
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _reference(obj: AssessedObject, name: Code) -> hd.sr.ContentItem:
    """An IMAGE item for a SEG (with its segment numbers), a COMPOSITE item for anything else."""
    header = obj.header
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    if obj.segment_numbers:
        return hd.sr.ImageContentItem(
            name=coded_concept(name),
            referenced_sop_class_uid=str(header.SOPClassUID),
            referenced_sop_instance_uid=str(header.SOPInstanceUID),
            referenced_segment_numbers=list(obj.segment_numbers),
            relationship_type=contains,
        )
    return hd.sr.CompositeContentItem(
        name=coded_concept(name),
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        relationship_type=contains,
    )


def store_assessment(settings: Settings, session: Session, review: Review) -> Result:
    """Write the assessment SR of ``review`` into the store, add its result row and deliveries.

    Sets ``review.assessment_result_id``. UIDs derive from the review, so writing it again
    gives the same instance.
    """
    assert review.id is not None, "store_assessment needs a flushed review row"
    ai_result = result_row(session, review.result_id)
    assessment = _assessment_of(settings, session, review, ai_result)
    series_uid = derived_uid("aira-assessment-series", ai_result.sop_instance_uid, str(review.id))
    sop_uid = derived_uid("aira-assessment", ai_result.sop_instance_uid, str(review.id))
    result = store_derived(
        settings,
        session,
        ai_result,
        partial(write_assessment, assessment, series_instance_uid=series_uid, sop_instance_uid=sop_uid),
        staging=settings.data_dir / "tmp" / f"assessment-{sop_uid}",
        kind=ASSESSMENT_KIND,
        sop_class_uid=str(ComprehensiveSRStorage),
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
    )
    review.assessment_result_id = result.id
    session.add(review)
    queue_like(settings, session, ai_result, result)
    logger.info("stored assessment SR (result %s) of review %s", result.id, review.id)
    return result


def _assessment_of(settings: Settings, session: Session, review: Review, ai_result: Result) -> Assessment:
    """What ``review`` decided, with the headers of the objects it is about."""
    ai_seg = result_header(settings, ai_result)
    assessed = [AssessedObject(ai_seg, tuple(int(i.SegmentNumber) for i in ai_seg.SegmentSequence))]
    assessed += [AssessedObject(result_header(settings, r)) for r in job_reports(session, ai_result)]
    modified = None
    if review.edited_result_id is not None:
        edited = result_header(settings, result_row(session, review.edited_result_id))
        modified = AssessedObject(edited, tuple(int(i.SegmentNumber) for i in edited.SegmentSequence))
    return Assessment(
        decision=review.decision,
        reviewer=review.reviewer,
        reason=review.reason,
        algorithm=AlgorithmIdentification(
            name=review.model_name or review.pipeline or "unknown",
            version=review.model_version or review.pipeline_version,
        ),
        assessed=tuple(assessed),
        modified=modified,
    )


def assessment_result_ids(session: Session) -> set[int]:
    """Result rows that are assessment SRs (not AI results)."""
    ids = session.exec(
        select(Review.assessment_result_id).where(col(Review.assessment_result_id).is_not(None))
    ).all()
    return {int(i) for i in ids if i is not None}


def job_reports(session: Session, ai_result: Result) -> Sequence[Result]:
    """The AI measurement SRs the AI result's job wrote (assessments of earlier decisions left out)."""
    assessments = assessment_result_ids(session)
    rows = session.exec(
        select(Result).where(Result.job_id == ai_result.job_id, Result.kind == "SR").order_by(col(Result.id))
    ).all()
    return [r for r in rows if r.id not in assessments]


def result_row(session: Session, result_id: int) -> Result:
    """The ``result`` row ``result_id``; :class:`NotFoundError` if there is none."""
    row = session.get(Result, result_id)
    if row is None:
        raise NotFoundError(f"no result {result_id}")
    return row


def result_header(settings: Settings, result: Result) -> Dataset:
    """The stored result's header (no pixel data)."""
    return pydicom.dcmread(settings.data_dir / result.path, stop_before_pixels=True)
