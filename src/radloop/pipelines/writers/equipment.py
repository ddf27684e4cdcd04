"""AIR algorithm identification: the Contributing Equipment item every radloop result carries.

IHE AIR asks each AI result to name the algorithm that made it in the Contributing Equipment
Sequence (0018,A001) of its SOP Common module: Manufacturer, Manufacturer's Model Name = the
model's name, Software Versions = the model's version, and a Device UID that identifies this
model *version* (a new version is a new device). The Device UID is derived from name and
version (:func:`radloop.core.uids.derived_uid`), so every result of one model version carries
the same UID and a retrained model gets a new one without any registry.
"""

from __future__ import annotations

from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from radloop.core.uids import derived_uid
from radloop.pipelines.ports import AlgorithmIdentification, Code
from radloop.pipelines.writers.ihe_codes import AIR_PROCESSING_ALGORITHM

DEFAULT_MANUFACTURER = "radloop"
MAX_LO = 64


def algorithm_device_uid(algorithm: AlgorithmIdentification) -> str:
    """The Device UID of one model version: the same for every result of it, new per version."""
    return derived_uid("air-algorithm-device", algorithm.name, algorithm.version)


def contributing_equipment(
    algorithm: AlgorithmIdentification, manufacturer: str = DEFAULT_MANUFACTURER
) -> Dataset:
    """The Contributing Equipment item naming ``algorithm`` as AIR asks."""
    _check_lo("manufacturer", manufacturer)
    _check_lo("algorithm.name", algorithm.name)
    item = Dataset()
    item.Manufacturer = manufacturer
    item.ManufacturerModelName = algorithm.name
    if algorithm.version:  # Type 3: left out rather than written empty
        _check_lo("algorithm.version", algorithm.version)
        item.SoftwareVersions = algorithm.version
    item.DeviceUID = algorithm_device_uid(algorithm)
    item.ContributionDateTime = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = f"AI algorithm {algorithm.name} {algorithm.version}"[:MAX_LO]
    item.PurposeOfReferenceCodeSequence = DicomSequence([code_item(AIR_PROCESSING_ALGORITHM)])
    return item


def add_contributing_equipment(
    ds: Dataset, algorithm: AlgorithmIdentification, manufacturer: str = DEFAULT_MANUFACTURER
) -> None:
    """Append the algorithm's item to ``ds``'s Contributing Equipment Sequence (kept if present)."""
    items = list(ds.get("ContributingEquipmentSequence", []))
    items.append(contributing_equipment(algorithm, manufacturer))
    ds.ContributingEquipmentSequence = DicomSequence(items)


def algorithm_equipment(ds: Dataset) -> list[Dataset]:
    """The Contributing Equipment items of ``ds`` that name an AI algorithm (AIR purpose code)."""
    code = AIR_PROCESSING_ALGORITHM
    return [
        item
        for item in ds.get("ContributingEquipmentSequence", [])
        if any(
            str(c.CodeValue) == code.value and str(c.CodingSchemeDesignator) == code.scheme
            for c in item.get("PurposeOfReferenceCodeSequence", [])
        )
    ]


def coded_concept(code: Code) -> hd.sr.CodedConcept:
    """A radloop :class:`Code` as a highdicom coded concept (SEG segments, SR content)."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def code_item(code: Code) -> Dataset:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _check_lo(name: str, value: str) -> None:
    if not value or len(value) > MAX_LO or "\\" in value:
        raise ValueError(f"{name} must be 1-{MAX_LO} characters, no backslash (DICOM LO); got {value!r}")
