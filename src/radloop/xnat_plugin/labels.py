"""Where a DICOM study goes in XNAT: subject and session labels, result kinds and resource labels.

XNAT organises images as project → subject → session (an *image session*, one per study) → scans
(one per series). A destination's ``subject_from`` / ``session_from`` say which attribute of the
study gives each label (PatientID, AccessionNumber, StudyInstanceUID) or that both come from a
lookup file: a CSV whose first column (named by ``lookup_key``) holds the key and whose ``subject``
and ``session`` columns hold the labels, e.g. to map hospital IDs onto research pseudonyms.

XNAT accepts letters, digits, ``_`` and ``-`` in labels; any other character (the dots of a UID,
the ``^`` of a name) becomes ``_``. Nothing here talks to a server.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from radloop.core.errors import ConfigError, DeliveryError
from radloop.core.settings import XnatDestination

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_-]")

# SOP Class UID (prefix) -> the kind of result it is; the kind names the session resource.
_KIND_BY_SOP_CLASS = (
    ("1.2.840.10008.5.1.4.1.1.66.4", "SEG"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
    ("1.2.840.10008.5.1.4.1.1.88.", "SR"),
    ("1.2.840.10008.5.1.4.1.1.7", "SC"),
)

RESULT_KINDS = tuple(kind for _, kind in _KIND_BY_SOP_CLASS)
"""The kinds of result radloop writes: SEG, RTSTRUCT, SR, SC."""

ROI_COLLECTION_TYPES = ("SEG", "RTSTRUCT")
"""Result kinds that the ICR ROI-collection plugin stores as an ``icr:roiCollectionData`` assessor."""


def xnat_label(value: str) -> str:
    """``value`` as an XNAT label: characters other than letters, digits, ``_`` and ``-`` become ``_``."""
    return _LABEL_BAD.sub("_", value.strip())


def result_kind(ds: Dataset) -> str:
    """SEG, RTSTRUCT, SR or SC from the SOP Class; otherwise the Modality (or ``DICOM``)."""
    sop_class_uid = str(ds.get("SOPClassUID", ""))
    for prefix, kind in _KIND_BY_SOP_CLASS:
        if sop_class_uid.startswith(prefix):
            return kind
    return str(ds.get("Modality", "") or "DICOM")


def resource_label(kind: str) -> str:
    """The session (or scan) resource a result of ``kind`` is stored in: the kind itself, e.g. ``SEG``."""
    return xnat_label(kind)


@dataclass(frozen=True)
class StudyPlace:
    """Where one study lives in XNAT."""

    project: str
    subject: str
    session: str

    @property
    def subject_in_logs(self) -> str:
        """The subject as log lines name it: a digest, since the label is often the PatientID."""
        return "subject#" + hashlib.sha256(self.subject.encode()).hexdigest()[:10]


class LabelMapper:
    """Maps a study's DICOM attributes to its XNAT subject and session labels (see module docstring)."""

    def __init__(self, config: XnatDestination) -> None:
        self.config = config
        self._lookup = _read_lookup(config.lookup_file, config.lookup_key) if config.lookup_file else {}

    def place(self, ds: Dataset) -> StudyPlace:
        """The project, subject and session of the study ``ds`` belongs to; DeliveryError if unknown."""
        c = self.config
        return StudyPlace(
            c.project, self._label(ds, c.subject_from, "subject"), self._label(ds, c.session_from, "session")
        )

    def _label(self, ds: Dataset, source: str, what: str) -> str:
        if source == "lookup":
            key = str(ds.get(self.config.lookup_key, "") or "").strip()
            row = self._lookup.get(key)
            if row is None or not row.get(what):
                raise DeliveryError(
                    f"no {what} label for {self.config.lookup_key} {key!r} in {self.config.lookup_file}"
                )
            value = row[what]
        else:
            value = str(ds.get(source, "") or "").strip()
        label = xnat_label(value)
        if not label:
            raise DeliveryError(f"the study has no {source}, so it has no XNAT {what} label")
        return label


def _read_lookup(path: Path, key: str) -> dict[str, dict[str, str]]:
    """Rows of the lookup CSV by their key column (header: ``<key>,subject,session``)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {key, "subject", "session"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{path}: lookup file lacks the columns {sorted(missing)}")
            return {row[key].strip(): row for row in reader if row.get(key)}
    except OSError as e:
        raise ConfigError(f"cannot read the XNAT lookup file {path}: {e}") from e
