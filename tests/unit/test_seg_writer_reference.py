"""The SEG writer writes the same data sets it wrote before it was made faster.

Each written SEG is reduced to a canonical text, element by element and into every sequence
item: the dates and times of writing, and UIDs that highdicom generates afresh per object, become
placeholders; every other value (including the UIDs the caller passes, the referenced source UIDs and the
standard's UIDs) is kept, and Pixel Data is kept as its SHA-256. The digests below were taken with
the writer of commit 08b884d on the same inputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from helpers_data import ct_series_paths, ellipsoid, series_ref_of, t1_series_paths
from radloop.pipelines.ports import AlgorithmIdentification, Code, LabelMap, Segment, Volume
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
BRAIN = Segment(1, "Brain", ANATOMICAL_STRUCTURE, Code("12738006", "SCT", "Brain"))
LIVER = Segment(1, "Liver", ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver"))
SPLEEN = Segment(5, "Spleen", ANATOMICAL_STRUCTURE, Code("78961009", "SCT", "Spleen"), tracking_id="spleen")
ALGORITHM = AlgorithmIdentification(name="radloop-test-model", version="2.1.0")
SERIES_UID, SOP_UID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"

WRITTEN_AT = frozenset({0x00080012, 0x00080013, 0x00080023, 0x00080033, 0x0018A002})
"""InstanceCreationDate/Time, ContentDate/Time, ContributionDateTime: when the SEG was written."""

BEFORE = {
    "t1": "d8144f9e8dbec3713a27a9db37122ad089e3ef5b2eef22c6f9a19fc6c1c30e5d",
    "ct": "e312602fe6314762084be9d8ba997f7692fd8b57143622553672a072085f259d",
    "ct-fractional": "dac0291f482d3b7df30d1a24cd995643a42f9a28981f60a6f2e0665f5db3eec2",
}


def _canonical(ds: Dataset, kept_uids: set[str], lines: list[str], indent: str = "") -> None:
    for element in ds:
        if element.VR == "SQ":
            lines.append(f"{indent}{element.tag} SQ {len(element.value)}")
            for item in element.value:
                _canonical(item, kept_uids, lines, indent + "  ")
        elif element.tag == 0x7FE00010:
            lines.append(f"{indent}{element.tag} {hashlib.sha256(element.value).hexdigest()}")
        elif element.tag in WRITTEN_AT:
            lines.append(f"{indent}{element.tag} {element.VR} <time>")
        elif element.VR == "UI" and not (
            str(element.value) in kept_uids or str(element.value).startswith("1.2.840.10008")
        ):
            lines.append(f"{indent}{element.tag} UI <generated>")
        else:
            lines.append(f"{indent}{element.tag} {element.VR} {element.value!r}")


def _kept(uid: str, kept_uids: set[str]) -> bool:
    return uid in kept_uids or uid.startswith("1.2.840.10008")  # the caller's, the source's, DICOM's


def seg_digest(path: Path, volume: Volume) -> str:
    """SHA-256 of the canonical text of the SEG at ``path`` (see the module docstring)."""
    ds = pydicom.dcmread(path)
    kept = {SERIES_UID, SOP_UID, volume.series.StudyInstanceUID, volume.series.SeriesInstanceUID}
    kept |= {volume.frame_of_reference_uid, *(f.sop_instance_uid for f in volume.source_frames)}
    kept |= {f.sop_class_uid for f in volume.source_frames}
    lines: list[str] = []
    _canonical(ds.file_meta, kept, lines)
    _canonical(ds, kept, lines)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _write(labelmap: LabelMap, folder: Path, *, fractional: bool = False) -> Path:
    return write_seg(
        labelmap,
        folder,
        series_instance_uid=SERIES_UID,
        sop_instance_uid=SOP_UID,
        series_number=901,
        series_description="AI brain mask",
        software_versions="0.0-test",
        fractional=fractional,
    )


def test_t1_brain_seg_is_unchanged(tmp_path: Path) -> None:
    paths = t1_series_paths(tmp_path / "t1")
    volume = load_volume(paths, series_ref_of(paths[0]))
    mask = ellipsoid(volume.array.shape, (85.0, 120.0, 128.0), (60.0, 80.0, 70.0))
    labelmap = LabelMap(mask.astype(np.uint8), volume, (BRAIN,), ALGORITHM)
    assert seg_digest(_write(labelmap, tmp_path / "seg"), volume) == BEFORE["t1"]


@pytest.mark.parametrize("fractional", [False, True])
def test_ct_two_segments_and_an_undescribed_label_are_unchanged(tmp_path: Path, fractional: bool) -> None:
    paths = ct_series_paths()
    volume = load_volume(paths, series_ref_of(paths[0]))
    labels = np.zeros(volume.array.shape, dtype=np.int16)
    labels[ellipsoid(labels.shape, (8.0, 250.0, 180.0), (6.0, 80.0, 60.0))] = 1
    labels[ellipsoid(labels.shape, (12.0, 300.0, 380.0), (5.0, 40.0, 40.0))] = 5
    labels[ellipsoid(labels.shape, (4.0, 100.0, 100.0), (3.0, 20.0, 20.0))] = 3  # no Segment: background
    labels[0, 0, 0] = -1  # out of range: background
    labelmap = LabelMap(labels, volume, (SPLEEN, LIVER), ALGORITHM)
    digest = seg_digest(_write(labelmap, tmp_path / "seg", fractional=fractional), volume)
    assert digest == BEFORE["ct-fractional" if fractional else "ct"]
