"""RTSTRUCT, SR and secondary-capture writers on real series: every object passes dciodvfy, reads
back with pydicom/highdicom, and sits on the source geometry."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from helpers_data import ellipsoid
from helpers_geometry import dice, fill_polygon, rasterise_rtstruct
from peers import dciodvfy, dciodvfy_report
from radloop.core.uids import derived_uid
from radloop.pipelines.operators.writers import (
    FindingsSrWriter,
    RtstructWriter,
    SecondaryCaptureWriter,
    SecondaryCaptureWriterOptions,
    SrWriter,
)
from radloop.pipelines.ports import (
    AlgorithmIdentification,
    Code,
    DicomObjects,
    Finding,
    Findings,
    LabelMap,
    Segment,
    Volume,
)
from radloop.pipelines.registry import NoOptions, OperatorContext
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.rtstruct import trace_contours, write_rtstruct
from radloop.pipelines.writers.secondary_capture import BANNER_COLOUR
from radloop.pipelines.writers.seg import write_seg
from radloop.pipelines.writers.source import slice_positions

ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
BRAIN = Segment(1, "Brain", ANATOMY, Code("12738006", "SCT", "Brain"))
VENTRICLE = Segment(3, "Ventricle", ANATOMY, Code("35764002", "SCT", "Brain ventricle"))
EMPTY = Segment(7, "Nothing", ANATOMY, Code("10200004", "SCT", "Liver"))
ALGORITHM = AlgorithmIdentification(name="radloop-test-model", version="2.1.0")


def _brain_labels(volume: Volume) -> LabelMap:
    """A brain-like ellipsoid (label 1) with a ventricle inside it (label 3, a hole in label 1)."""
    shape = volume.array.shape
    centre = tuple(s / 2 for s in shape)
    labels = ellipsoid(shape, centre, tuple(s * 0.35 for s in shape)).astype(np.uint8)
    labels[ellipsoid(shape, centre, tuple(s * 0.08 for s in shape))] = VENTRICLE.number
    return LabelMap(labels, volume, (BRAIN, VENTRICLE, EMPTY), ALGORITHM)


def _check_conformant(path: Path) -> None:
    assert dciodvfy(path) == [], dciodvfy_report(path)


# --------------------------------------------------------------------------- RTSTRUCT


def test_rtstruct_contours_rasterise_back_to_the_mask(t1_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(t1_volume)

    path = write_rtstruct(
        labelmap,
        tmp_path,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9902,
        series_description="AI contours",
    )

    _check_conformant(path)
    rt = pydicom.dcmread(path)
    assert rt.Modality == "RTSTRUCT" and rt.StudyInstanceUID == t1_volume.series.StudyInstanceUID
    assert rt.FrameOfReferenceUID == t1_volume.frame_of_reference_uid
    frame_ref = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame_ref.FrameOfReferenceUID == t1_volume.frame_of_reference_uid
    series_ref = frame_ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == t1_volume.series.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series_ref.ContourImageSequence} == {
        f.sop_instance_uid for f in t1_volume.source_frames
    }
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    assert {n: str(r.ROIName) for n, r in rois.items()} == {1: "Brain", 3: "Ventricle", 7: "Nothing"}
    assert all(r.ReferencedFrameOfReferenceUID == t1_volume.frame_of_reference_uid for r in rois.values())
    observations = {int(o.ReferencedROINumber): o for o in rt.RTROIObservationsSequence}
    assert observations[3].RTROIIdentificationCodeSequence[0].CodeValue == "35764002"
    for segment in (BRAIN, VENTRICLE):
        mask = labelmap.array == segment.number
        back = rasterise_rtstruct(rt, t1_volume, segment.number)
        score = dice(back, mask)
        print(f"\nRTSTRUCT {segment.label}: Dice {score:.4f} against the label map")
        assert score >= 0.95
    empty = [r for r in rt.ROIContourSequence if r.ReferencedROINumber == EMPTY.number][0]
    assert "ContourSequence" not in empty


def test_rtstruct_contours_lie_in_their_source_slices(ct_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(ct_volume)
    path = write_rtstruct(
        labelmap,
        tmp_path,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9902,
        series_description="AI contours",
    )
    _check_conformant(path)
    rt = pydicom.dcmread(path)
    positions = dict(
        zip((f.sop_instance_uid for f in ct_volume.source_frames), slice_positions(ct_volume), strict=True)
    )
    normal = ct_volume.affine[:3, 0] / np.linalg.norm(ct_volume.affine[:3, 0])
    contours = [c for roi in rt.ROIContourSequence for c in roi.get("ContourSequence", [])]
    assert contours
    for contour in contours:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        points = np.array(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        assert len(points) == contour.NumberOfContourPoints
        origin = positions[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        np.testing.assert_allclose((points - origin) @ normal, 0.0, atol=0.01)


def test_rtstruct_of_a_multi_frame_source_names_frames(t1_volume: Volume, tmp_path: Path) -> None:
    sources = [pydicom.dcmread(p) for p in t1_volume.source_paths[70:90]]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        series_number=1301,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        transfer_syntax_uid=RLELossless,
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    volume = load_volume([tmp_path / "enhanced.dcm"], t1_volume.series)
    labelmap = _brain_labels(volume)

    path = write_rtstruct(
        labelmap,
        tmp_path / "rt",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9902,
        series_description="AI",
    )

    _check_conformant(path)
    rt = pydicom.dcmread(path)
    assert dice(rasterise_rtstruct(rt, volume, BRAIN.number), labelmap.array == BRAIN.number) >= 0.95
    images = (
        rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    )
    assert sorted(int(i.ReferencedFrameNumber) for i in images) == list(range(1, 21))


def test_trace_contours_outer_boundary_and_hole() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    mask[4:6, 4:6] = False
    outer, hole = sorted(trace_contours(mask), key=len, reverse=True)
    assert (
        len(outer) == 8 and len(hole) == 8
    )  # straight runs reduced to the corners (cut by marching squares)
    assert outer[:, 0].min() == pytest.approx(1.5) and outer[:, 0].max() == pytest.approx(7.5)
    assert np.array_equal(fill_polygon(outer, mask.shape) ^ fill_polygon(hole, mask.shape), mask)


# --------------------------------------------------------------------------- SR


def _seg_file(labelmap: LabelMap, tmp_path: Path) -> Path:
    return write_seg(
        labelmap,
        tmp_path / "seg",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI",
    )


def test_sr_volumes_equal_the_seg_voxels(t1_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(t1_volume)
    seg_path = _seg_file(labelmap, tmp_path)
    ctx = OperatorContext(job_id=3, idempotency_key="job-3", workdir=tmp_path)

    outputs = SrWriter(SrWriter.Options()).run(
        ctx, {"labelmap": labelmap, "seg": DicomObjects(paths=(seg_path,), kind="SEG")}
    )

    (path,) = outputs["sr"].paths
    assert outputs["sr"].kind == "SR"
    _check_conformant(path)
    sr = hd.sr.srread(path)
    assert sr.SOPInstanceUID == derived_uid("job-3", "sr", "instance")
    assert sr.StudyInstanceUID == t1_volume.series.StudyInstanceUID
    seg = hd.seg.segread(seg_path)
    evidence = {
        str(i.SeriesInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for i in s.ReferencedSeriesSequence
    }
    assert evidence == {seg.SeriesInstanceUID, t1_volume.series.SeriesInstanceUID}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(labelmap.segments)
    voxel_ml = float(np.prod(seg.get_volume().spacing)) / 1000.0
    for group, segment in zip(groups, sorted(labelmap.segments, key=lambda s: s.number), strict=True):
        reference = group.referenced_segment
        assert reference is not None
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        (seg_number,) = reference.referenced_segment_numbers or [None]
        assert seg_number is not None
        assert seg.get_segment_description(seg_number).SegmentLabel == segment.label
        (measurement,) = group.get_measurements()
        assert measurement.name == hd.sr.CodedConcept("118565006", "SCT", "Volume")
        assert measurement.unit.value == "mL"
        seg_voxels = np.count_nonzero(
            seg.get_volume(segment_numbers=[seg_number], combine_segments=True).array
        )
        # rel 1e-5: the SEG header holds the slice spacing as a rounded Decimal String
        assert measurement.value == pytest.approx(seg_voxels * voxel_ml, rel=1e-5)
        assert measurement.value == pytest.approx(seg_voxels * t1_volume.voxel_volume_ml, rel=1e-12)
        assert group.finding_type.value == segment.type.value


def test_sr_findings_report(ct_volume: Volume, tmp_path: Path) -> None:
    findings = Findings(
        items=(
            Finding(Code("36118008", "SCT", "Pneumothorax"), 0.91, present=True),
            Finding(
                Code("233604007", "SCT", "Pneumonia"),
                0.08,
                present=False,
                site=Code("39607008", "SCT", "Lung"),
            ),
        ),
        reference=ct_volume,
        algorithm=AlgorithmIdentification("cxr-classifier", "0.3"),
    )
    ctx = OperatorContext(job_id=4, idempotency_key="job-4", workdir=tmp_path)

    (path,) = FindingsSrWriter(FindingsSrWriter.Options()).run(ctx, {"findings": findings})["sr"].paths

    _check_conformant(path)
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert [g.finding_type.meaning for g in groups] == ["Pneumothorax", "Pneumonia"]
    assert [g.get_measurements()[0].value for g in groups] == pytest.approx([0.91, 0.08])
    assert [g.get_qualitative_evaluations()[0].value.meaning for g in groups] == ["Present", "Absent"]
    with pytest.raises(ValueError, match="probability"):
        Finding(Code("1", "SCT", "x"), 1.5)


def test_sr_writer_refuses_a_seg_of_other_segments(t1_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(t1_volume)
    other = LabelMap(labelmap.array, t1_volume, (BRAIN, VENTRICLE), ALGORITHM)
    seg_path = _seg_file(other, tmp_path)
    ctx = OperatorContext(job_id=5, idempotency_key="job-5", workdir=tmp_path)
    with pytest.raises(ValueError, match="differ"):
        SrWriter(SrWriter.Options()).run(ctx, {"labelmap": labelmap, "seg": DicomObjects((seg_path,), "SEG")})
    with pytest.raises(ValueError, match="one SEG"):
        SrWriter(SrWriter.Options()).run(ctx, {"labelmap": labelmap, "seg": DicomObjects((seg_path,), "SC")})


# --------------------------------------------------------------------------- secondary capture


def test_secondary_capture_burns_in_outline_legend_and_banner(ct_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(ct_volume)
    ctx = OperatorContext(job_id=6, idempotency_key="job-6", workdir=tmp_path)

    paths = (
        SecondaryCaptureWriter(SecondaryCaptureWriterOptions()).run(ctx, {"labelmap": labelmap})["sc"].paths
    )

    labelled = [k for k in range(labelmap.array.shape[0]) if labelmap.array[k].any()]
    assert len(paths) == len(labelled)
    positions = slice_positions(ct_volume)
    for n, (path, k) in enumerate(zip(paths, labelled, strict=True)):
        if n in (0, len(paths) // 2):
            _check_conformant(path)
        sc = pydicom.dcmread(path)
        assert (sc.SOPClassUID, sc.BurnedInAnnotation, sc.PhotometricInterpretation) == (
            "1.2.840.10008.5.1.4.1.1.7",
            "YES",
            "RGB",
        )
        assert sc.StudyInstanceUID == ct_volume.series.StudyInstanceUID
        assert sc.SeriesInstanceUID == ctx.uid("sc", "series") and sc.InstanceNumber == k + 1
        assert (
            sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ct_volume.source_frames[k].sop_instance_uid
        )
        np.testing.assert_allclose([float(v) for v in sc.ImagePositionPatient], positions[k], atol=0.01)
        assert (sc.Rows, sc.Columns) == ct_volume.array.shape[1:]
    middle = pydicom.dcmread(paths[len(paths) // 2]).pixel_array
    assert tuple(middle[1, 1]) == BANNER_COLOUR  # the red NOT FOR DIAGNOSIS banner
    k = labelled[len(labelled) // 2]
    brain = labelmap.array[k] == BRAIN.number
    edge_pixels = middle[brain & ~np.roll(brain, 1, axis=1)]
    assert (edge_pixels == (255, 64, 64)).all(axis=1).mean() > 0.5  # the outline, in the brain's colour


def test_secondary_capture_all_slices_and_stable_uids(ct_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(ct_volume)
    options = SecondaryCaptureWriterOptions(slices="all")
    ctx = OperatorContext(job_id=8, idempotency_key="job-8", workdir=tmp_path / "a")
    first = SecondaryCaptureWriter(options).run(ctx, {"labelmap": labelmap})["sc"].paths
    again = (
        SecondaryCaptureWriter(options)
        .run(
            OperatorContext(job_id=8, idempotency_key="job-8", workdir=tmp_path / "b"), {"labelmap": labelmap}
        )["sc"]
        .paths
    )
    assert len(first) == ct_volume.array.shape[0]
    assert [p.name for p in first] == [p.name for p in again]  # a retry writes the same SOP Instance UIDs
    _check_conformant(first[0])


def test_rtstruct_operator_uids_are_stable(ct_volume: Volume, tmp_path: Path) -> None:
    labelmap = _brain_labels(ct_volume)
    ctx = OperatorContext(job_id=9, idempotency_key="job-9", workdir=tmp_path)
    (path,) = RtstructWriter(RtstructWriter.Options()).run(ctx, {"labelmap": labelmap})["rtstruct"].paths
    rt = pydicom.dcmread(path, stop_before_pixels=True)
    assert rt.SOPInstanceUID == derived_uid("job-9", "rtstruct", "instance")
    assert (rt.SeriesNumber, rt.SeriesDescription, rt.StructureSetLabel) == (9902, "AI contours", "AI")
    assert not isinstance(RtstructWriter.Options(), NoOptions)
