"""LabelMap → DICOM SEG on real series: conformance (dciodvfy), round trip (highdicom), geometry."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid

from helpers_data import ellipsoid, pydicom_test_file, series_ref_of
from peers import dciodvfy
from radloop.core.uids import derived_uid
from radloop.pipelines.operators.imaging import SegWriter, SegWriterOptions
from radloop.pipelines.ports import AlgorithmIdentification, Code, DicomObjects, LabelMap, Segment, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")  # CID 7150
LIVER = Segment(1, "Liver", ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver"))
SPLEEN = Segment(5, "Spleen", ANATOMICAL_STRUCTURE, Code("78961009", "SCT", "Spleen"), tracking_id="spleen")
BRAIN = Segment(1, "Brain", ANATOMICAL_STRUCTURE, Code("12738006", "SCT", "Brain"))
ALGORITHM = AlgorithmIdentification(name="radloop-test-model", version="2.1.0")


def _source_positions(volume: Volume) -> dict[tuple[str, int | None], npt.NDArray[np.float64]]:
    """ImagePositionPatient of each source frame, read straight from the source headers."""
    positions: dict[tuple[str, int | None], npt.NDArray[np.float64]] = {}
    for path in volume.source_paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        if "PerFrameFunctionalGroupsSequence" in ds:
            for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
                positions[uid, number] = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        else:
            positions[uid, None] = np.array(ds.ImagePositionPatient, float)
    return positions


def _check_frames_sit_on_source_slices(seg: Dataset, volume: Volume) -> None:
    """Each SEG frame's position equals that of the source frame it derives from (to 0.01 mm)."""
    sources = _source_positions(volume)
    multi_frame = volume.source_frames[0].frame_number is not None
    assert len(seg.PerFrameFunctionalGroupsSequence) == seg.NumberOfFrames > 0
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(source.ReferencedFrameNumber) if multi_frame else None
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, sources[str(source.ReferencedSOPInstanceUID), frame], atol=0.01)


def _decoded_labels(
    seg: hd.seg.Segmentation, volume: Volume, segments: list[Segment]
) -> npt.NDArray[np.int64]:
    """The SEG read back onto the volume grid, SEG segment numbers mapped back to label values."""
    frames = volume.source_frames
    if frames[0].frame_number is None:
        combined = seg.get_pixels_by_source_instance(
            [f.sop_instance_uid for f in frames], combine_segments=True, assert_missing_frames_are_empty=True
        )
    else:
        combined = seg.get_pixels_by_source_frame(
            frames[0].sop_instance_uid,
            [f.frame_number for f in frames],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    label_of_seg_number = np.array([0, *(s.number for s in sorted(segments, key=lambda s: s.number))])
    return label_of_seg_number[combined]  # type: ignore[no-any-return]


def _check_seg(path: Path, labelmap: LabelMap, *, fractional: bool = False) -> hd.seg.Segmentation:
    """dciodvfy clean, and what highdicom reads back is what was written."""
    errors = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    seg = hd.seg.segread(path)
    volume = labelmap.reference
    assert seg.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
    assert len(seg.SegmentSequence) == len(labelmap.segments)
    for item in seg.SegmentSequence:
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == ALGORITHM.family.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.StudyInstanceUID == volume.series.StudyInstanceUID
    assert seg.SeriesInstanceUID != volume.series.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [volume.series.SeriesInstanceUID]
    referenced = {
        str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {f.sop_instance_uid for f in volume.source_frames}
    _check_frames_sit_on_source_slices(seg, volume)
    described = np.isin(labelmap.array, [s.number for s in labelmap.segments])
    np.testing.assert_array_equal(
        _decoded_labels(seg, volume, list(labelmap.segments)), labelmap.array * described
    )
    return seg


def test_seg_writer_operator_on_t1_brain(t1_volume: Volume, tmp_path: Path) -> None:
    shape = t1_volume.array.shape
    mask = ellipsoid(shape, (85, 120, 128), (60, 80, 70))
    labelmap = LabelMap(mask.astype(np.uint8), t1_volume, (BRAIN,), ALGORITHM)
    options = SegWriterOptions.model_validate({"series_description": "Brain mask", "series_number": 9902})
    ctx = OperatorContext(job_id=7, idempotency_key="job-7", workdir=tmp_path)

    outputs = SegWriter(options).run(ctx, {"labelmap": labelmap})

    result = outputs["seg"]
    assert isinstance(result, DicomObjects) and result.kind == "SEG"
    (path,) = result.paths
    assert path == tmp_path / "seg" / f"{ctx.uid('seg', 'instance')}.dcm"
    seg = _check_seg(path, labelmap)
    assert seg.SOPInstanceUID == derived_uid("job-7", "seg", "instance")
    assert seg.SeriesInstanceUID == derived_uid("job-7", "seg", "series")
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9902, "Brain mask")
    assert seg.NumberOfFrames < shape[0]  # empty frames omitted
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_ct_two_segments_keep_their_codes(ct_volume: Volume, tmp_path: Path, fractional: bool) -> None:
    shape = ct_volume.array.shape
    labels = np.zeros(shape, dtype=np.int16)
    labels[ellipsoid(shape, (10, 260, 150), (8, 90, 80))] = LIVER.number
    labels[ellipsoid(shape, (12, 250, 400), (5, 50, 40))] = SPLEEN.number
    labels[3, :4, :4] = 7  # a label value no Segment describes: written as background
    labelmap = LabelMap(labels, ct_volume, (SPLEEN, LIVER), ALGORITHM)
    series_uid, instance_uid = generate_uid(), generate_uid()

    path = write_seg(
        labelmap,
        tmp_path,
        series_instance_uid=series_uid,
        sop_instance_uid=instance_uid,
        series_number=9901,
        series_description="AI organs",
        fractional=fractional,
    )

    assert path == tmp_path / f"{instance_uid}.dcm"
    seg = _check_seg(path, labelmap, fractional=fractional)
    assert seg.SOPInstanceUID == instance_uid and seg.SeriesInstanceUID == series_uid
    by_number = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert (by_number[1].SegmentLabel, by_number[2].SegmentLabel) == ("Liver", "Spleen")  # ordered by label
    assert by_number[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert by_number[2].SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert by_number[2].TrackingID == "spleen" and "TrackingUID" in by_number[2]


def test_multi_frame_source_frames_are_referenced(t1_volume: Volume, tmp_path: Path) -> None:
    """A Legacy Converted Enhanced MR whose stored frame order differs from the volume order."""
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
    assert [f.frame_number for f in volume.source_frames] != list(range(1, 21))
    mask = ellipsoid(volume.array.shape, (10, 120, 128), (12, 60, 50))
    labelmap = LabelMap(mask.astype(np.uint8), volume, (BRAIN,), ALGORITHM)

    path = write_seg(
        labelmap,
        tmp_path / "seg",
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI brain",
    )

    _check_seg(path, labelmap)


def test_enhanced_ct_source(tmp_path: Path) -> None:
    path = pydicom_test_file("eCT_Supplemental.dcm")
    volume = load_volume([path], series_ref_of(path))
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[0, 100:200, 150:300] = 1
    labels[1, 300:310, 10:20] = 1
    labelmap = LabelMap(labels, volume, (BRAIN,), ALGORITHM)

    written = write_seg(
        labelmap,
        tmp_path,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI",
    )

    _check_seg(written, labelmap)


def test_empty_labelmap_still_writes_a_conformant_seg(ct_volume: Volume, tmp_path: Path) -> None:
    """A model that finds nothing still reports it: highdicom then keeps every (empty) frame."""
    labelmap = LabelMap(np.zeros(ct_volume.array.shape, dtype=np.uint8), ct_volume, (LIVER,), ALGORITHM)

    path = write_seg(
        labelmap,
        tmp_path,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9901,
        series_description="AI organs",
    )

    seg = _check_seg(path, labelmap)
    assert seg.NumberOfFrames == ct_volume.array.shape[0]


def test_seg_writer_options_are_strict() -> None:
    assert SegWriterOptions().model_dump() == {
        "series_description": "AI segmentation",
        "series_number": 9901,
        "fractional": False,
    }
    with pytest.raises(ValidationError, match="colour"):
        SegWriterOptions.model_validate({"colour": "red"})
