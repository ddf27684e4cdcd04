"""De-identification of exported cases: keyed pseudonyms, and NIfTI headers without free text.

What an export holds about a patient is limited to pixel data, geometry and the radloop
pseudonyms made here. Pseudonyms are HMAC-SHA256 of the original identifier under a key that
stays on the server (``training_export.pseudonym_key``, or one derived from ``secret_key``),
so the same patient always gets the same pseudonym on this server, nobody without the key can
recompute or invert it, and different servers (keys) give unlinkable pseudonyms.

Nothing else from the DICOM headers is exported: no names, IDs, dates, times, UIDs, accession
numbers, descriptions or institution names (the PS3.15 Basic Application Level Confidentiality
Profile removes or replaces all of these). The NIfTI header fields that could carry text
(``descrip``, ``aux_file``, ``intent_name``, ``db_name``) are emptied and no header extensions
are written. Not done here, and stated in the README: defacing (a head MRI shows the face) and
removal of text burned into pixels.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import nibabel as nib

from radloop.core.settings import Settings

PSEUDONYM_HEX_DIGITS = 12
"""Length of a patient/study/series/reviewer pseudonym's hash part (48 bits: no collisions in practice)."""

CASE_HEX_DIGITS = 8
"""Length of the per-case hash part appended to the patient pseudonym in a case identifier."""

_KEY_DERIVATION_LABEL = b"radloop/training-export/pseudonym-key/v1"
_FINGERPRINT_LABEL = b"radloop/training-export/key-fingerprint/v1"
_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


@dataclass(frozen=True)
class Pseudonymizer:
    """Makes keyed pseudonyms; the key itself is never exported or logged."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("Pseudonymizer.key must hold at least 16 bytes")

    def __repr__(self) -> str:
        return f"Pseudonymizer(fingerprint={self.fingerprint})"

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonymizer:
        """The server's pseudonymizer: the dedicated key, else one derived from ``secret_key``."""
        own = settings.training_export.pseudonym_key
        if own is not None and own.get_secret_value():
            return cls(hashlib.sha256(own.get_secret_value().encode()).digest())
        secret_key = settings.secret_key.get_secret_value().encode()
        return cls(hmac.new(secret_key, _KEY_DERIVATION_LABEL, hashlib.sha256).digest())

    @property
    def fingerprint(self) -> str:
        """A short, non-invertible name of the key, stored in an export to detect a key change."""
        return hmac.new(self.key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]

    def digest(self, kind: str, *values: str) -> str:
        """Hex HMAC-SHA256 of ``values`` in the namespace ``kind`` (patient and study never collide)."""
        message = "\x1f".join((kind, *values)).encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def patient(self, patient_id: str) -> str:
        """Pseudonym of a patient, e.g. ``pat-3fa9c01b22e4``."""
        return "pat-" + self.digest("patient", patient_id)[:PSEUDONYM_HEX_DIGITS]

    def study(self, study_instance_uid: str) -> str:
        """Pseudonym of a study (``stu-…``)."""
        return "stu-" + self.digest("study", study_instance_uid)[:PSEUDONYM_HEX_DIGITS]

    def series(self, series_instance_uid: str) -> str:
        """Pseudonym of a series (``ser-…``)."""
        return "ser-" + self.digest("series", series_instance_uid)[:PSEUDONYM_HEX_DIGITS]

    def reviewer(self, reviewer: str) -> str:
        """Pseudonym of a reviewer (``rev-…``)."""
        return "rev-" + self.digest("reviewer", reviewer)[:PSEUDONYM_HEX_DIGITS]

    def case(self, patient_pseudonym: str, ai_sop_instance_uid: str) -> str:
        """Case identifier: the patient pseudonym and a hash of the AI result, e.g. ``pat-…_9ab01c3d``.

        One case per AI result (a series processed twice gives two cases); file names use it.
        """
        return f"{patient_pseudonym}_{self.digest('case', ai_sop_instance_uid)[:CASE_HEX_DIGITS]}"

    def review(self, review_id: int, decided_at: str) -> str:
        """A token naming one review decision, to notice in a later export that a case was re-reviewed."""
        return self.digest("review", str(review_id), decided_at)[:PSEUDONYM_HEX_DIGITS]


def clean_nifti_header(header: nib.Nifti1Header) -> None:
    """Empty every free-text field of ``header`` (dcm2niix puts acquisition times in ``descrip``)."""
    for name in _TEXT_FIELDS:
        header[name] = b""


def nifti_header_text(header: nib.Nifti1Header) -> dict[str, bytes]:
    """The free-text fields of ``header`` (for checks that they are empty)."""
    return {name: bytes(header[name].tobytes()).rstrip(b"\x00") for name in _TEXT_FIELDS}
