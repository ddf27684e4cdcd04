"""DICOM series → Volume on real data: compressed CT, a sagittal T1, Enhanced multi-frame, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from helpers_data import ct_series_paths, pydicom_test_file, series_ref_of, shared_data_dir, t1_series_paths
from radloop.core.errors import InputDataError
from radloop.core.refs import SeriesRef
from radloop.pipelines.operators.imaging import SeriesToVolume
from radloop.pipelines.ports import SeriesInput, Volume
from radloop.pipelines.registry import NoOptions, OperatorContext
from radloop.pipelines.volume import load_volume


@pytest.fixture(scope="module")
def t1_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return t1_series_paths(tmp_path_factory.mktemp("t1"))


def _headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _voxel_to_lps(volume: Volume, index: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    """Patient position (LPS mm) of voxel ``index`` through the volume's affine."""
    return np.asarray(volume.affine @ np.array([*index, 1.0]), dtype=np.float64)[:3]


def _copy_with(src: Path, dst: Path, **attributes: object) -> Path:
    """Copy of `src` with header attributes replaced (None deletes) and a new SOPInstanceUID."""
    ds = pydicom.dcmread(src, force=True)  # some pydicom test files have no File Meta Information
    ds.ensure_file_meta()
    ds.file_meta.setdefault("TransferSyntaxUID", ImplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


# --------------------------------------------------------------------------- real series


def test_ct_jpeg2000_series_decodes_to_volume_sorted_along_normal() -> None:
    paths = ct_series_paths()
    headers = {str(h.SOPInstanceUID): h for h in _headers(paths)}
    volume = load_volume(list(reversed(paths)), series_ref_of(paths[0]))

    assert volume.array.shape == (20, 512, 512)
    assert volume.array.dtype == np.float32
    pixel_spacing = [float(v) for v in next(iter(headers.values())).PixelSpacing]
    assert volume.spacing == pytest.approx((2.0, *pixel_spacing))  # positions, not SliceThickness 3 mm
    zs = [float(headers[f.sop_instance_uid].ImagePositionPatient[2]) for f in volume.source_frames]
    assert zs == sorted(zs)  # axial: the normal is +z (toward the head)
    for k, frame in enumerate(volume.source_frames):
        expected = [float(v) for v in headers[frame.sop_instance_uid].ImagePositionPatient]
        np.testing.assert_allclose(_voxel_to_lps(volume, (k, 0, 0)), expected, atol=1e-3)
    # one row down = +y (posterior), one column right = +x (patient left)
    origin = volume.affine[:3, 3]
    np.testing.assert_allclose(_voxel_to_lps(volume, (0, 1, 0)) - origin, [0, pixel_spacing[0], 0])
    np.testing.assert_allclose(_voxel_to_lps(volume, (0, 0, 1)) - origin, [pixel_spacing[1], 0, 0])
    assert volume.modality == "CT"
    assert volume.frame_of_reference_uid == str(next(iter(headers.values())).FrameOfReferenceUID)
    assert [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in volume.source_paths] == [
        f.sop_instance_uid for f in volume.source_frames
    ]


def test_ct_values_are_rescaled_to_hounsfield_units() -> None:
    paths = ct_series_paths()
    volume = load_volume(paths, series_ref_of(paths[0]))
    first = pydicom.dcmread(volume.source_paths[0])
    expected = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], expected.astype(np.float32))
    assert volume.array.min() == -1024.0  # air outside the field of view


def test_t1_sagittal_series_is_one_mm_isotropic(t1_paths: list[Path]) -> None:
    volume = load_volume(t1_paths, series_ref_of(t1_paths[0]))

    assert volume.array.shape == (170, 256, 256)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0), abs=1e-3)
    assert volume.modality == "MR"
    headers = {str(h.SOPInstanceUID): h for h in _headers(t1_paths)}
    for k in (0, 85, 169):
        header = headers[volume.source_frames[k].sop_instance_uid]
        np.testing.assert_allclose(
            _voxel_to_lps(volume, (k, 0, 0)), [float(v) for v in header.ImagePositionPatient], atol=0.01
        )
    slope = float(next(iter(headers.values())).RescaleSlope)
    assert slope != 1.0  # Philips scales MR values: the Modality LUT must be applied
    stored = pydicom.dcmread(volume.source_paths[85]).pixel_array
    np.testing.assert_allclose(volume.array[85], stored * slope, rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_transfer_syntaxes_decode_to_the_same_volume(name: str) -> None:
    reference_path = pydicom_test_file("MR_small.dcm")
    reference = load_volume([reference_path], series_ref_of(reference_path))
    path = pydicom_test_file(name)
    volume = load_volume([path], series_ref_of(path))
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine)


def test_deflated_transfer_syntax_decodes(tmp_path: Path) -> None:
    reference_path = pydicom_test_file("MR_small.dcm")
    ds = pydicom.dcmread(reference_path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    volume = load_volume([tmp_path / "deflated.dcm"], series_ref_of(reference_path))
    reference = load_volume([reference_path], series_ref_of(reference_path))
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.spacing[0] == pytest.approx(float(ds.SliceThickness))  # one slice: nothing to measure


def test_jpeg_lossless_with_odd_header_decodes(tmp_path: Path) -> None:
    """pydicom's `bad_sequence.dcm`: JPEG Lossless SV1 CT with malformed UIDs, made sendable here."""
    series = SeriesRef(generate_uid(), generate_uid())
    path = _copy_with(
        pydicom_test_file("bad_sequence.dcm"),
        tmp_path / "jpeg_lossless.dcm",
        StudyInstanceUID=series.StudyInstanceUID,
        SeriesInstanceUID=series.SeriesInstanceUID,
        FrameOfReferenceUID=generate_uid(),
    )
    volume = load_volume([path], series)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(
        volume.array[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    )


# --------------------------------------------------------------------------- multi-frame


def test_enhanced_ct_frames_use_functional_groups() -> None:
    path = pydicom_test_file("eCT_Supplemental.dcm")  # Enhanced CT Image Storage, 2 frames
    volume = load_volume([path], series_ref_of(path))
    ds = pydicom.dcmread(path)

    assert volume.array.shape == (2, 512, 512)
    # orientation [-1,0,0, 0,1,0] → normal -z: frame 2 (z=-149) comes before frame 1 (z=-159)
    assert [f.frame_number for f in volume.source_frames] == [2, 1]
    assert {f.sop_class_uid for f in volume.source_frames} == {"1.2.840.10008.5.1.4.1.1.2.1"}
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    np.testing.assert_allclose(volume.affine[:3, 3], [99.5, -301.5, -149.0])
    # shared Pixel Value Transformation: intercept -1024
    np.testing.assert_array_equal(volume.array[0], ds.pixel_array[1].astype(np.float32) - 1024.0)
    assert volume.source_paths == (path,)


def _legacy_enhanced_mr(t1_paths: list[Path], out: Path, transfer_syntax: str) -> Path:
    sources = [pydicom.dcmread(p) for p in t1_paths]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        series_number=1301,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        transfer_syntax_uid=transfer_syntax,
    )
    image.save_as(out)
    return out


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, RLELossless])
def test_legacy_converted_enhanced_mr_matches_its_single_frame_sources(
    t1_paths: list[Path], tmp_path: Path, transfer_syntax: str
) -> None:
    subset = t1_paths[60:84]
    series = series_ref_of(subset[0])
    single = load_volume(subset, series)
    path = _legacy_enhanced_mr(subset, tmp_path / "enhanced.dcm", transfer_syntax)

    multi = load_volume([path], series)

    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-6)
    assert [f.frame_number for f in multi.source_frames] != list(range(1, 25))  # stored in another order
    assert sorted(f.frame_number or 0 for f in multi.source_frames) == list(range(1, 25))


def test_per_frame_pixel_value_transformation_is_applied(t1_paths: list[Path], tmp_path: Path) -> None:
    subset = t1_paths[80:84]
    path = _legacy_enhanced_mr(subset, tmp_path / "enhanced.dcm", RLELossless)
    ds = pydicom.dcmread(path)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        transformation = Dataset()
        transformation.RescaleSlope = str(number)
        transformation.RescaleIntercept = str(-number)
        transformation.RescaleType = "US"
        item.PixelValueTransformationSequence = [transformation]
    ds.save_as(path)

    volume = load_volume([path], series_ref_of(subset[0]))

    stored = ds.pixel_array.astype(np.float64)
    for k, frame in enumerate(volume.source_frames):
        n = frame.frame_number or 0
        np.testing.assert_allclose(volume.array[k], stored[n - 1] * n - n)


# --------------------------------------------------------------------------- bad input


def test_mixed_image_sizes_are_rejected(tmp_path: Path) -> None:
    ct = ct_series_paths()[:3]
    header = pydicom.dcmread(ct[0], stop_before_pixels=True)
    odd = _copy_with(
        pydicom_test_file("MR_small.dcm"),
        tmp_path / "small.dcm",
        StudyInstanceUID=header.StudyInstanceUID,
        SeriesInstanceUID=header.SeriesInstanceUID,
        FrameOfReferenceUID=header.FrameOfReferenceUID,
    )
    with pytest.raises(InputDataError, match="mixed image sizes: .* is 512x512, small.dcm is 64x64"):
        load_volume([*ct, odd], series_ref_of(ct[0]))


def test_non_image_object_in_series_is_rejected(tmp_path: Path) -> None:
    ct = ct_series_paths()[:3]
    header = pydicom.dcmread(ct[0], stop_before_pixels=True)
    rtstruct = _copy_with(
        pydicom_test_file("rtstruct.dcm"),
        tmp_path / "rtstruct.dcm",
        StudyInstanceUID=header.StudyInstanceUID,
        SeriesInstanceUID=header.SeriesInstanceUID,
    )
    expected = r"rtstruct.dcm: no pixel data \(SOP Class 1.2.840.10008.5.1.4.1.1.481.3 is not an image"
    with pytest.raises(InputDataError, match=expected):
        load_volume([*ct, rtstruct], series_ref_of(ct[0]))


def test_segmentation_is_not_loaded_as_an_image(tmp_path: Path) -> None:
    liver = pydicom_test_file("liver.dcm")
    with pytest.raises(InputDataError, match="a Segmentation .* is not an image"):
        load_volume([liver], series_ref_of(liver))


def test_instance_of_another_series_is_rejected() -> None:
    ct = ct_series_paths()[:2]
    other = pydicom_test_file("CT_small.dcm")
    with pytest.raises(InputDataError, match="CT_small.dcm: belongs to series .*, not "):
        load_volume([*ct, other], series_ref_of(ct[0]))


def test_mixed_orientations_are_rejected(t1_paths: list[Path], tmp_path: Path) -> None:
    subset = t1_paths[:3]
    tilted = _copy_with(subset[2], tmp_path / "tilted.dcm", ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    with pytest.raises(InputDataError, match="mixed orientations: .* tilted.dcm has"):
        load_volume([*subset[:2], tilted], series_ref_of(subset[0]))


def test_missing_image_position_is_rejected(tmp_path: Path) -> None:
    ct = ct_series_paths()[:2]
    stripped = _copy_with(ct[1], tmp_path / "noposition.dcm", ImagePositionPatient=None)
    with pytest.raises(InputDataError, match="noposition.dcm: ImagePositionPatient is missing"):
        load_volume([ct[0], stripped], series_ref_of(ct[0]))


def test_duplicate_positions_are_rejected(tmp_path: Path) -> None:
    ct = ct_series_paths()[:3]
    duplicate = _copy_with(ct[1], tmp_path / "repeat.dcm")
    with pytest.raises(InputDataError, match="duplicate slice position"):
        load_volume([*ct, duplicate], series_ref_of(ct[0]))


def test_missing_slice_is_rejected() -> None:
    ct = ct_series_paths()
    with pytest.raises(InputDataError, match="slice spacing is not uniform"):
        load_volume(ct[:5] + ct[6:], series_ref_of(ct[0]))


def test_published_ct_with_empty_uids_is_rejected() -> None:
    raw = sorted((shared_data_dir() / "ct-abdomen-totalseg" / "example_ct_dicom").glob("*"))[:3]
    series = series_ref_of(ct_series_paths()[0])
    with pytest.raises(InputDataError, match="SOPClassUID or SOPInstanceUID is missing"):
        load_volume(raw, series)


def test_truncated_pixel_data_is_an_input_error() -> None:
    truncated = pydicom_test_file("MR_truncated.dcm")
    with pytest.raises(InputDataError, match="MR_truncated.dcm: cannot decode pixel data"):
        load_volume([truncated], series_ref_of(truncated))


def test_multi_frame_without_functional_groups_is_rejected(tmp_path: Path) -> None:
    dose = pydicom_test_file("rtdose.dcm")
    with pytest.raises(InputDataError, match="multi-frame object without functional groups"):
        load_volume([dose], series_ref_of(dose))


def test_file_that_is_not_dicom_is_rejected(tmp_path: Path) -> None:
    ct = ct_series_paths()[0]
    junk = tmp_path / "notes.dcm"
    shutil.copyfile(shared_data_dir() / "README.md", junk)
    with pytest.raises(InputDataError, match="notes.dcm"):
        load_volume([ct, junk], series_ref_of(ct))


# --------------------------------------------------------------------------- operator


def test_series_to_volume_operator(tmp_path: Path) -> None:
    paths = ct_series_paths()
    operator = SeriesToVolume(NoOptions())
    ctx = OperatorContext(job_id=1, idempotency_key="job-1", workdir=tmp_path)
    series = SeriesInput(ref=series_ref_of(paths[0]), modality="CT", paths=tuple(paths))

    outputs = operator.run(ctx, {"series": series})

    assert set(outputs) == set(SeriesToVolume.outputs) == {"volume"}
    assert isinstance(outputs["volume"], Volume)
    assert outputs["volume"].array.shape == (20, 512, 512)
    assert outputs["volume"].series == series.ref


def test_a_stored_million_frame_instance_fails_fast_with_a_reason(tmp_path: Path) -> None:
    """Written before the receive checks existed (or by hand): the job fails with the reason at
    once; it never walks a million frames (issue: hostile input)."""
    import time

    from hostile_instances import million_frames

    path = tmp_path / "million.dcm"
    path.write_bytes(million_frames())
    started = time.monotonic()
    with pytest.raises(InputDataError, match="multi-frame"):
        load_volume([path], series_ref_of(path))
    assert time.monotonic() - started < 2.0
