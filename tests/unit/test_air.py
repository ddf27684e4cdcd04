"""IHE AIR and AIRA on written objects: every result radloop writes (SEG, RTSTRUCT, SR, SC) and
every assessment SR names its algorithm in Contributing Equipment, with a Device UID per model
version, and passes dciodvfy; assessment SRs read back with highdicom.

The end-to-end path (review API → assessment SRs in Orthanc) is in
`integration/test_assessments.py`.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from helpers_data import ellipsoid
from peers import dciodvfy, dciodvfy_report
from radloop.core.models import ReviewDecision
from radloop.feedback.assessments import AssessedObject, Assessment, write_assessment
from radloop.pipelines.ports import AlgorithmIdentification, Code, Finding, LabelMap, Segment, Volume
from radloop.pipelines.writers import ihe_codes
from radloop.pipelines.writers.equipment import algorithm_device_uid, algorithm_equipment
from radloop.pipelines.writers.rtstruct import write_rtstruct
from radloop.pipelines.writers.secondary_capture import CaptureSeries, write_secondary_captures
from radloop.pipelines.writers.seg import write_seg
from radloop.pipelines.writers.sr import ReportSeries, write_findings_report, write_volume_report

pytestmark = pytest.mark.peers  # dciodvfy

LESION = Segment(
    1, "Lesion", Code("49755003", "SCT", "Morphologically Altered Structure"), Code("4147007", "SCT", "Mass")
)
VERSIONS = (AlgorithmIdentification("lesion-net", "1.0.0"), AlgorithmIdentification("lesion-net", "1.1.0"))


def _labelmap(volume: Volume, algorithm: AlgorithmIdentification) -> LabelMap:
    shape = volume.array.shape
    labels = ellipsoid(shape, tuple(s / 2 for s in shape), tuple(s * 0.2 for s in shape)).astype(np.uint8)
    return LabelMap(labels, volume, (LESION,), algorithm)


def _series(kind: str) -> ReportSeries:
    return ReportSeries(generate_uid(), generate_uid(), 9903, f"AI {kind}")


def _write_all(volume: Volume, algorithm: AlgorithmIdentification, out: Path) -> dict[str, Path]:
    """One object of every kind radloop writes, by ``algorithm``."""
    labelmap = _labelmap(volume, algorithm)
    seg = write_seg(
        labelmap,
        out / "seg",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI lesion",
    )
    rtstruct = write_rtstruct(
        labelmap,
        out / "rt",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9902,
        series_description="AI contours",
    )
    header = pydicom.dcmread(seg, stop_before_pixels=True)
    sr = write_volume_report(labelmap, header, out / "sr", _series("volumes"))
    findings = write_findings_report(
        [Finding(Code("4147007", "SCT", "Mass"), 0.7, present=True)],
        volume,
        algorithm,
        out / "findings",
        _series("findings"),
    )
    sc = write_secondary_captures(labelmap, out / "sc", CaptureSeries(generate_uid(), 9904, "AI overlay"))[0]
    return {"SEG": seg, "RTSTRUCT": rtstruct, "SR": sr, "SR findings": findings, "SC": sc}


def _algorithm_item(ds: Dataset) -> Dataset:
    (item,) = algorithm_equipment(ds)
    return item


def test_every_result_names_its_algorithm_with_a_device_uid_per_version(
    ct_volume: Volume, tmp_path: Path
) -> None:
    written = [_write_all(ct_volume, algorithm, tmp_path / algorithm.version) for algorithm in VERSIONS]

    for kind in written[0]:
        device_uids = []
        for algorithm, paths in zip(VERSIONS, written, strict=True):
            path = paths[kind]
            assert dciodvfy(path) == [], f"{kind}: {dciodvfy_report(path)}"
            item = _algorithm_item(pydicom.dcmread(path, stop_before_pixels=True))
            (purpose,) = item.PurposeOfReferenceCodeSequence
            code = ihe_codes.AIR_PROCESSING_ALGORITHM
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == (code.value, code.scheme), kind
            assert (item.Manufacturer, item.ManufacturerModelName) == ("radloop", "lesion-net"), kind
            assert item.SoftwareVersions == algorithm.version, kind
            assert item.DeviceUID == algorithm_device_uid(algorithm), kind
            device_uids.append(item.DeviceUID)
        assert device_uids[0] != device_uids[1], f"{kind}: the Device UID must change with the model version"


def test_volume_report_references_segments_and_source_images(ct_volume: Volume, tmp_path: Path) -> None:
    paths = _write_all(ct_volume, VERSIONS[0], tmp_path)
    seg = pydicom.dcmread(paths["SEG"], stop_before_pixels=True)
    sr = hd.sr.srread(paths["SR"])

    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    reference = group.referenced_segment
    assert reference is not None
    assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert reference.referenced_segment_numbers == [1]
    sources = {str(s.referenced_sop_instance_uid) for s in reference.source_images_for_segmentation}
    assert sources == {f.sop_instance_uid for f in ct_volume.source_frames}


@pytest.mark.parametrize("decision", list(ReviewDecision))
def test_assessment_sr_is_verified_and_references_the_result(
    ct_volume: Volume, tmp_path: Path, decision: ReviewDecision
) -> None:
    paths = _write_all(ct_volume, VERSIONS[1], tmp_path)
    seg = pydicom.dcmread(paths["SEG"], stop_before_pixels=True)
    report = pydicom.dcmread(paths["SR"], stop_before_pixels=True)
    edited = seg if decision != ReviewDecision.edited else _edited_seg(ct_volume, tmp_path)
    assessment = Assessment(
        decision=decision,
        reviewer="dr.house",
        reason="wrong organ" if decision == ReviewDecision.rejected else "",
        algorithm=VERSIONS[1],
        assessed=(AssessedObject(seg, (1,)), AssessedObject(report)),
        modified=AssessedObject(edited, (1,)) if decision == ReviewDecision.edited else None,
    )
    sop = generate_uid()

    path = write_assessment(
        assessment, tmp_path / "aira", series_instance_uid=generate_uid(), sop_instance_uid=sop
    )

    assert dciodvfy(path) == [], dciodvfy_report(path)
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert (sr.SOPInstanceUID, sr.StudyInstanceUID) == (sop, seg.StudyInstanceUID)
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("VERIFIED", "COMPLETE")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "dr.house^"
    assert _algorithm_item(sr).DeviceUID == algorithm_device_uid(VERSIONS[1])
    items = {(str(i.ConceptNameCodeSequence[0].CodeValue), i.ValueType): i for i in sr.ContentSequence}
    code = items[(ihe_codes.ASSESSMENT.value, "CODE")].ConceptCodeSequence[0]
    assert code.CodeValue == ihe_codes.ASSESSMENT_CODES[decision.value].value
    assert code.CodingSchemeDesignator == "99RADLOOP"
    assessed = [
        i
        for i in sr.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == ihe_codes.ASSESSED_RESULT.value
    ]
    refs = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID): i.ReferencedSOPSequence[0] for i in assessed
    }
    assert set(refs) == {seg.SOPInstanceUID, report.SOPInstanceUID}
    assert refs[seg.SOPInstanceUID].ReferencedSegmentNumber == 1
    modified = items.get((ihe_codes.MODIFIED_RESULT.value, "IMAGE"))
    if decision == ReviewDecision.edited:
        assert modified is not None
        assert modified.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == edited.SOPInstanceUID
    else:
        assert modified is None
    if decision == ReviewDecision.rejected:
        assert items[(ihe_codes.REJECTION_REASON.value, "TEXT")].TextValue == "wrong organ"


def _edited_seg(volume: Volume, tmp_path: Path) -> Dataset:
    labelmap = _labelmap(volume, VERSIONS[1])
    path = write_seg(
        labelmap,
        tmp_path / "edited",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9911,
        series_description="AI lesion - reviewed and edited",
        algorithm_type="SEMIAUTOMATIC",
        content_creator_name="dr.house^",
    )
    return pydicom.dcmread(path, stop_before_pixels=True)
