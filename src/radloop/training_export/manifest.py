"""The provenance manifest of each exported case: ``provenance/<case>.json``.

It says where the case came from and how its label was made, in pseudonyms only: the source
(patient, study and series pseudonyms, modality, number of images), the pipeline and model
(name, version), the review (reviewer pseudonym, decision, decision time, which mask became the
label), the agreement between the AI mask and the final one (Dice, overall and per label; voxel
counts), the NIfTI grid, and the case's side of the split.

The decision time is the review system's own clock (UTC, to the second), not a date from the
patient's record; no date or time from the DICOM data is exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any

import radloop
from radloop.core.models import ReviewDecision
from radloop.training_export.cases import ReviewedCase
from radloop.training_export.deid import Pseudonymizer
from radloop.training_export.labels import DatasetLabel
from radloop.training_export.splits import Split

PROVENANCE_DIR = "provenance"


def provenance_path(case_id: str) -> str:
    """The manifest of a case, relative to the dataset root."""
    return f"{PROVENANCE_DIR}/{case_id}.json"


def label_source(decision: ReviewDecision) -> str:
    """Which mask became the label: the edited SEG, or the AI SEG (accepted, or rejected when asked for)."""
    return {
        ReviewDecision.edited: "edited mask",
        ReviewDecision.accepted: "AI mask (accepted)",
        ReviewDecision.rejected: "AI mask (rejected by the reviewer)",
    }[decision]


@dataclass(frozen=True)
class CaseRecord:
    """What the export learnt about one case while converting it."""

    case_id: str
    split: Split
    image: str
    label: str
    model_name: str
    model_version: str
    agreement: dict[str, Any] | None
    voxels_ai: dict[str, int]
    voxels_final: dict[str, int]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    images: int


def provenance(
    case: ReviewedCase, record: CaseRecord, ids: Pseudonymizer, labels: tuple[DatasetLabel, ...]
) -> dict[str, Any]:
    """The provenance manifest of ``case`` (JSON content)."""
    patient = ids.patient(case.patient_key)
    return {
        "case": record.case_id,
        "split": record.split.value,
        "image": record.image,
        "label": record.label,
        "labels": {"0": "background", **{str(label.value): label.name for label in labels}},
        "source": {
            "patient": patient,
            "study": ids.study(case.series.StudyInstanceUID),
            "series": ids.series(case.series.SeriesInstanceUID),
            "modality": case.modality,
            "images": record.images,
        },
        "pipeline": {"name": case.pipeline, "version": case.pipeline_version},
        "model": {"name": record.model_name, "version": record.model_version},
        "review": {
            "reviewer": ids.reviewer(case.reviewer),
            "decision": case.decision.value,
            "decision_time": case.decided_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "label_source": label_source(case.decision),
        },
        "agreement": record.agreement,
        "voxels": {"ai": record.voxels_ai, "final": record.voxels_final},
        "grid": {
            "shape": list(record.shape),
            "spacing_mm": [round(s, 6) for s in record.spacing_mm],
            "orientation": "RAS",
        },
        "exported_by": f"radloop {radloop.__version__}",
    }
