"""The one mapping table of codes that IHE's AI profiles use but DICOM has not (yet) published.

* **AIR** (IHE Radiology "AI Results") asks every AI result to name its algorithm in the
  Contributing Equipment Sequence, with a Purpose of Reference that the supplement gives as a
  placeholder ("Newcode1", 99IHE, "Processing Algorithm"); the placeholder's final DICOM code
  is not assigned. radloop writes the placeholder as the issue quotes it (value ``1630``).
  Checked: the published AIR text could not be consulted from here, so this value is the one
  to verify first; DICOM's nearest published code is (109102, DCM, "Processing Equipment").
* **AIRA** ("AI Result Assessment") records a radiologist's accept / reject / modify of an AI
  result. Its codes are not in DICOM either: radloop uses private codes in the coding scheme
  ``99RADLOOP`` until they are.

Swap a code here and every writer follows; nothing else in radloop spells these values.
"""

from __future__ import annotations

from radloop.pipelines.ports import Code

PRIVATE_SCHEME = "99RADLOOP"
"""radloop's private coding scheme designator (PS3.16 §8.2: private schemes start with 99)."""

# ----------------------------------------------------------------------------------- AIR

AIR_PROCESSING_ALGORITHM = Code("1630", "99IHE", "Processing Algorithm")
"""Purpose of Reference of the Contributing Equipment item naming the AI algorithm (AIR)."""

# ---------------------------------------------------------------------------------- AIRA

ASSESSMENT_DOCUMENT = Code("RL-AIRA-100", PRIVATE_SCHEME, "AI Result Assessment")
"""Document title (root container) of an assessment SR."""

ASSESSMENT = Code("RL-AIRA-101", PRIVATE_SCHEME, "Assessment of AI result")
"""Concept name of the coded decision."""

ASSESSMENT_ACCEPTED = Code("RL-AIRA-110", PRIVATE_SCHEME, "AI result accepted")
ASSESSMENT_REJECTED = Code("RL-AIRA-111", PRIVATE_SCHEME, "AI result rejected")
ASSESSMENT_MODIFIED = Code("RL-AIRA-112", PRIVATE_SCHEME, "AI result modified")

REJECTION_REASON = Code("RL-AIRA-120", PRIVATE_SCHEME, "Reason for rejection")
"""Concept name of the free-text reason a rejection (or modification) gives."""

ASSESSED_RESULT = Code("RL-AIRA-130", PRIVATE_SCHEME, "Assessed AI result")
"""Concept name of each reference to the AI result (its SEG with segment numbers, its SR)."""

MODIFIED_RESULT = Code("RL-AIRA-131", PRIVATE_SCHEME, "Modified AI result")
"""Concept name of the reference to the radiologist's edited SEG."""

ASSESSMENT_CODES: dict[str, Code] = {
    "accepted": ASSESSMENT_ACCEPTED,
    "rejected": ASSESSMENT_REJECTED,
    "edited": ASSESSMENT_MODIFIED,
}
"""Review decision (:class:`radloop.core.models.ReviewDecision` value) → coded assessment."""

# ------------------------------------------------------------------- result plausibility

RESULT_PLAUSIBILITY = Code("RL-QC-100", PRIVATE_SCHEME, "AI result plausibility")
"""Concept of a qualitative evaluation in an SR measurement group: is the result plausible?"""
RESULT_IMPLAUSIBLE = Code("RL-QC-101", PRIVATE_SCHEME, "Result outside the plausible range")
"""Its value when the algorithm's own checks failed (e.g. a prostate of 3 mL): review the result."""
