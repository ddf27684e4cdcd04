"""References to DICOM entities by their UIDs (no pixel data, no PHI)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str | None) -> bool:
    """True if ``value`` is a syntactically valid DICOM UID (PS3.5 §9.1): digits and dots, ≤ 64 chars."""
    return bool(value) and len(value or "") <= 64 and bool(_UID_RE.match(value or ""))


def _check_uid(name: str, value: str) -> None:
    if not is_valid_uid(value):
        raise ValueError(f"{name} {value!r} is not a valid DICOM UID")


@dataclass(frozen=True)
class StudyRef:
    """A study, by StudyInstanceUID."""

    StudyInstanceUID: str

    def __post_init__(self) -> None:
        _check_uid("StudyInstanceUID", self.StudyInstanceUID)


@dataclass(frozen=True)
class SeriesRef:
    """A series within a study, by StudyInstanceUID and SeriesInstanceUID."""

    StudyInstanceUID: str
    SeriesInstanceUID: str

    def __post_init__(self) -> None:
        _check_uid("StudyInstanceUID", self.StudyInstanceUID)
        _check_uid("SeriesInstanceUID", self.SeriesInstanceUID)

    @property
    def study(self) -> StudyRef:
        return StudyRef(self.StudyInstanceUID)
