"""Training export parts without a database: splits, pseudonyms, NIfTI geometry, formats, state.

The end-to-end export on real reviewed results (MONAI, nnU-Net, dcm2niix, de-identification
scan) is ``tests/integration/test_training_export_datasets.py``.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from radloop.cli.export import parse_decisions, parse_since
from radloop.core.errors import ConfigError, ExportError
from radloop.core.geometry import LPS_TO_RAS
from radloop.core.models import ReviewDecision
from radloop.core.refs import SeriesRef
from radloop.core.settings import load_settings
from radloop.pipelines.ports import SourceFrame, Volume
from radloop.training_export import ExportFormat, ExportRequest
from radloop.training_export.cases import ReviewedCase
from radloop.training_export.deid import Pseudonymizer, nifti_header_text
from radloop.training_export.formats import CaseFiles, DatasetIndex, DatasetInfo, default_dataset_name
from radloop.training_export.labels import DatasetLabel, SegMask, agreement, check_labels, to_dataset_values
from radloop.training_export.nifti import (
    canonical_reorientation,
    image_nifti,
    label_nifti,
    write_nifti_gz,
)
from radloop.training_export.registry import dataset_format
from radloop.training_export.splits import Split, assign_splits, validation_target
from radloop.training_export.state import (
    STATE_FILE,
    ExportSettingsRecord,
    ExportState,
    exclusive_folder,
    load_state,
    write_json,
)

SERIES = SeriesRef("1.2.3", "1.2.3.4")
BRAIN = DatasetLabel(1, "Brain", "SCT", "12738006", "Brain")
LIVER = DatasetLabel(2, "Liver", "SCT", "10200004", "Liver")
PATIENTS = [f"pat-{i:012x}" for i in range(100)]


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    ("patients", "fraction", "expected"),
    [
        (0, 0.2, 0),
        (1, 0.5, 0),
        (2, 0.2, 1),
        (5, 0.4, 2),
        (10, 0.2, 2),
        (10, 0.0, 0),
        (3, 0.9, 2),
        (7, 0.25, 2),
    ],
)
def test_validation_target(patients: int, fraction: float, expected: int) -> None:
    """round(fraction × patients), at least one once there are two patients, never all of them."""
    assert validation_target(patients, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        validation_target(10, fraction)


def test_split_is_reproducible_from_the_seed_and_independent_of_order() -> None:
    first = assign_splits(PATIENTS, {}, 0.2, seed=11)
    assert assign_splits(list(reversed(PATIENTS)), {}, 0.2, seed=11) == first
    assert sum(side == Split.validation for side in first.values()) == 20
    assert set(first) == set(PATIENTS)
    assert assign_splits(PATIENTS, {}, 0.2, seed=12) != first


def test_an_incremental_split_keeps_every_earlier_side() -> None:
    earlier = assign_splits(PATIENTS[:40], {}, 0.2, seed=3)
    later = assign_splits(PATIENTS, earlier, 0.2, seed=3)
    assert {p: later[p] for p in earlier} == earlier
    assert sum(side == Split.validation for side in later.values()) == 20
    lopsided = {p: Split.validation for p in PATIENTS[:30]}  # already past 20 %: every new patient trains
    grown = assign_splits(PATIENTS, lopsided, 0.2, seed=3)
    assert {grown[p] for p in PATIENTS[30:]} == {Split.training}


# --------------------------------------------------------------------------- pseudonyms


def test_pseudonyms_are_keyed_stable_and_namespaced() -> None:
    ids, other = Pseudonymizer(b"k" * 32), Pseudonymizer(b"m" * 32)
    assert ids.patient("12345") == Pseudonymizer(b"k" * 32).patient("12345")
    assert ids.patient("12345") != other.patient("12345")
    assert ids.patient("12345")[4:] != ids.study("12345")[4:]
    assert ids.patient("12345").startswith("pat-") and len(ids.patient("12345")) == 16
    case = ids.case(ids.patient("12345"), "1.2.3.4.5")
    assert case.startswith(ids.patient("12345") + "_") and len(case) == 16 + 1 + 8
    assert ids.fingerprint != other.fingerprint
    assert "k" * 32 not in repr(ids)
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymizer(b"short")


def test_the_key_comes_from_its_own_setting_or_from_the_secret_key() -> None:
    derived = Pseudonymizer.from_settings(load_settings(secret_key="one-secret-key-of-enough-length"))
    rotated = Pseudonymizer.from_settings(load_settings(secret_key="another-secret-key-entirely"))
    assert derived.patient("P") != rotated.patient("P")
    own = {"training_export": {"pseudonym_key": "dedicated-pseudonym-key"}}
    first = Pseudonymizer.from_settings(load_settings(secret_key="one-secret-key-of-enough-length", **own))
    second = Pseudonymizer.from_settings(load_settings(secret_key="another-secret-key-entirely", **own))
    assert first.patient("P") == second.patient("P") != derived.patient("P")


# --------------------------------------------------------------------------- NIfTI geometry


def _volume(array: npt.NDArray[np.floating], affine: npt.NDArray[np.float64]) -> Volume:
    frames = tuple(
        SourceFrame("1.2.840.10008.5.1.4.1.1.4", f"1.2.3.4.{i + 1}") for i in range(array.shape[0])
    )
    return Volume(array, affine, "1.2.3.5", SERIES, "MR", frames, ())


def _lps_affine(
    row_dir: list[float], col_dir: list[float], spacing: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    """Affine over (frame, row, column) for ImageOrientationPatient row/column directions."""
    row, col = np.array(row_dir, float), np.array(col_dir, float)
    normal = np.cross(row, col)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = normal * spacing[0], col * spacing[1], row * spacing[2]
    affine[:3, 3] = [-90.0, 120.5, 33.25]
    return affine


ORIENTATIONS = {
    "axial": ([1, 0, 0], [0, 1, 0]),
    "sagittal": ([0, 1, 0], [0, 0, -1]),
    "coronal": ([1, 0, 0], [0, 0, -1]),
    "oblique": ([0.9961947, 0.0871557, 0], [-0.0868241, 0.9924039, -0.0871557]),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_nifti_is_the_closest_ras_orientation_and_keeps_every_voxel_in_place(orientation: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 3000, size=(5, 6, 7)).astype(np.float32)
    volume = _volume(array, _lps_affine(*ORIENTATIONS[orientation], spacing=(2.0, 0.7, 0.8)))
    reorientation = canonical_reorientation(volume)
    image = image_nifti(volume, reorientation)
    expected = nib.as_closest_canonical(nib.Nifti1Image(array, LPS_TO_RAS @ volume.affine))
    np.testing.assert_allclose(image.affine, expected.affine, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(expected.dataobj))
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:  # voxel value at a world point: the same before and after
        world = LPS_TO_RAS @ volume.affine @ [*index, 1]
        ijk = np.rint(np.linalg.inv(image.affine) @ world)[:3].astype(int)
        assert np.asarray(image.dataobj)[tuple(ijk)] == array[index]
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")


def test_nifti_headers_carry_no_text_and_say_scanner_mm_and_label() -> None:
    volume = _volume(
        np.arange(60, dtype=np.float32).reshape(3, 4, 5), _lps_affine([1, 0, 0], [0, 1, 0], (1, 1, 1))
    )
    reorientation = canonical_reorientation(volume)
    image, labels = (
        image_nifti(volume, reorientation),
        label_nifti(np.ones((3, 4, 5), np.uint16), reorientation),
    )
    assert image.get_data_dtype() == np.int16  # whole numbers: stored exactly
    assert labels.get_data_dtype() == np.uint8 and labels.header.get_intent()[0] == "label"
    for header in (image.header, labels.header):
        assert (int(header["sform_code"]), int(header["qform_code"])) == (1, 1)
        assert header.get_xyzt_units() == ("mm", "sec")
        assert nifti_header_text(header) == {
            "descrip": b"",
            "aux_file": b"",
            "intent_name": b"",
            "db_name": b"",
        }
    scaled = _volume(volume.array * 0.5, volume.affine)
    assert image_nifti(scaled, reorientation).get_data_dtype() == np.float32


def test_written_files_are_byte_identical_and_read_back(tmp_path: Path) -> None:
    volume = _volume(
        np.random.default_rng(1).random((4, 5, 6), dtype=np.float32),
        _lps_affine([1, 0, 0], [0, 1, 0], (1, 1, 1)),
    )
    image = image_nifti(volume, canonical_reorientation(volume))
    write_nifti_gz(image, tmp_path / "a.nii.gz")
    write_nifti_gz(image, tmp_path / "b.nii.gz")
    data = (tmp_path / "a.nii.gz").read_bytes()
    assert data == (tmp_path / "b.nii.gz").read_bytes()
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME: none
    np.testing.assert_array_equal(nib.load(tmp_path / "a.nii.gz").get_fdata(), image.get_fdata())
    assert gzip.decompress(data)[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header
    assert not list(tmp_path.glob(".*"))  # no temporary file left


# --------------------------------------------------------------------------- labels


def test_edited_segments_are_matched_to_the_dataset_labels_by_code() -> None:
    edited = SegMask(
        np.array([[[0, 1, 2]]], dtype=np.uint16),
        (
            DatasetLabel(1, "liver (edited)", "SCT", "10200004", "Liver"),
            DatasetLabel(2, "brain", "SCT", "12738006", "Brain"),
        ),
        "",
        "",
    )
    np.testing.assert_array_equal(to_dataset_values(edited, (BRAIN, LIVER), "case"), [[[0, 2, 1]]])
    unknown = SegMask(edited.array, (DatasetLabel(1, "Spleen", "SCT", "78961009", "Spleen"),), "", "")
    with pytest.raises(ExportError, match="Spleen"):
        to_dataset_values(unknown, (BRAIN, LIVER), "case")
    with pytest.raises(ExportError, match="one set of labels"):
        check_labels((BRAIN,), (DatasetLabel(1, "Liver", "SCT", "10200004", "Liver"),), "case")


def test_agreement_is_dice_overall_and_per_label() -> None:
    ai = np.array([1, 1, 2, 2, 0, 0])
    final = np.array([1, 0, 2, 2, 2, 0])
    result = agreement(ai, final, (BRAIN, LIVER))
    assert result["dice"] == pytest.approx(2 * 3 / (4 + 4), abs=1e-6)
    assert result["dice_per_label"] == {
        "Brain": pytest.approx(2 / 3, abs=1e-6),
        "Liver": pytest.approx(0.8, abs=1e-6),
    }


# --------------------------------------------------------------------------- formats


def _index(validation: bool = True) -> DatasetIndex:
    cases = [
        CaseFiles(f"pat-{i:012x}_0000000{i}", f"imagesTr/c{i}.nii.gz", f"labelsTr/c{i}.nii.gz")
        for i in range(3)
    ]
    return DatasetIndex(
        DatasetInfo("BrainExtraction", 501, "d"),
        (BRAIN,),
        "MR",
        tuple(cases[:2]),
        tuple(cases[2:]) if validation else (),
    )


def test_formats_lay_out_files_and_index_them() -> None:
    monai = dataset_format("monai").index_files(_index())["datalist.json"]
    assert monai["labels"] == {"0": "background", "1": "Brain"}
    assert [e["image"] for e in monai["training"]] == ["imagesTr/c0.nii.gz", "imagesTr/c1.nii.gz"]
    msd = dataset_format("msd").index_files(_index())["dataset.json"]
    assert msd["training"][0] == {"image": "./imagesTr/c0.nii.gz", "label": "./labelsTr/c0.nii.gz"}
    assert (msd["numTraining"], msd["modality"], msd["tensorImageSize"]) == (2, {"0": "MRI"}, "3D")
    nnunet = dataset_format(ExportFormat.nnunet)
    assert nnunet.dataset_root(Path("/raw"), _index().info) == Path("/raw/Dataset501_BrainExtraction")
    assert (
        nnunet.image_path("x") == "imagesTr/x_0000.nii.gz" and nnunet.label_path("x") == "labelsTr/x.nii.gz"
    )
    files = nnunet.index_files(_index())
    assert files["dataset.json"]["labels"] == {"background": 0, "Brain": 1}
    assert files["dataset.json"]["numTraining"] == 3
    assert files["splits_final.json"] == [
        {
            "train": ["pat-000000000000_00000000", "pat-000000000001_00000001"],
            "val": ["pat-000000000002_00000002"],
        }
    ]
    assert nnunet.index_files(_index(validation=False))["splits_final.json"] is None  # removed if there
    with pytest.raises(ValueError, match="unknown dataset format"):
        dataset_format("nifti-zoo")


def test_dataset_names_and_requests_are_checked() -> None:
    assert default_dataset_name("brain-extraction") == "BrainExtraction"
    request = ExportRequest(pipeline="brain-extraction", out_dir=Path("x"), format=ExportFormat.monai)
    assert request.decisions == {ReviewDecision.accepted, ReviewDecision.edited}
    for bad in (
        {"val_fraction": 1.0},
        {"dataset_name": "Brain_1"},
        {"dataset_id": 1000},
        {"decisions": frozenset()},
        {"since": datetime(2026, 1, 1)},
        {"pipeline": ""},
    ):
        with pytest.raises(ValueError):
            ExportRequest(**{"pipeline": "p", "out_dir": Path("x"), "format": ExportFormat.msd, **bad})  # type: ignore[arg-type]


def test_reviewed_case_is_valid_once_constructed(tmp_path: Path) -> None:
    fields = dict(
        review_id=1,
        series=SERIES,
        modality="MR",
        source_paths=(tmp_path / "1.dcm",),
        ai_seg_path=tmp_path / "seg.dcm",
        ai_sop_instance_uid="1.2.3.9",
        final_seg_path=None,
        decision=ReviewDecision.accepted,
        reviewer="r",
        decided_at=datetime(2026, 1, 1, tzinfo=UTC),
        model_name="m",
        model_version="1",
        pipeline="p",
        pipeline_version="1",
        patient_id="",
    )
    case = ReviewedCase(**fields)  # type: ignore[arg-type]
    assert case.patient_key == "study:1.2.3" and case.label_seg_path == tmp_path / "seg.dcm"
    for bad, rule in (
        ({"decision": ReviewDecision.edited}, "final_seg_path is required"),
        ({"final_seg_path": tmp_path / "e.dcm"}, "must be None"),
        ({"source_paths": ()}, "source_paths"),
        ({"decided_at": datetime(2026, 1, 1)}, "timezone"),
    ):
        with pytest.raises(ValueError, match=rule):
            ReviewedCase(**{**fields, **bad})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- state


def _record(seed: int = 0) -> ExportSettingsRecord:
    return ExportSettingsRecord(
        "monai", "brain-extraction", "BrainExtraction", 500, ("accepted", "edited"), seed, 0.2, "f" * 16
    )


def test_state_round_trips_and_refuses_other_settings(tmp_path: Path) -> None:
    state = ExportState(_record(), "MR", (BRAIN,), {"pat-1": Split.validation}, {})
    write_json(tmp_path / STATE_FILE, state.to_json())
    loaded = load_state(tmp_path, _record())
    assert loaded.to_json() == state.to_json()
    with pytest.raises(ExportError, match="seed: the folder has 0, this export asks for 5"):
        load_state(tmp_path, _record(seed=5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        load_state(tmp_path / "other", _record())
    assert json.loads((tmp_path / STATE_FILE).read_text())["patients"] == {"pat-1": "validation"}


# --------------------------------------------------------------------------- command-line arguments


def test_cli_arguments_parse_decisions_and_dates() -> None:
    assert parse_decisions("accepted, edited") == {ReviewDecision.accepted, ReviewDecision.edited}
    with pytest.raises(ConfigError, match="one of accepted, edited, rejected"):
        parse_decisions("accepted,maybe")
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_since("2026-03-01T10:30:00+01:00") == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(ConfigError, match="--since"):
        parse_since("last tuesday")


def test_one_export_at_a_time_per_folder(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    with exclusive_folder(root):
        assert root.is_dir()
        with pytest.raises(ExportError, match="another export"), exclusive_folder(root):
            pass
        load_state(root, _record())  # the lock file does not make the folder "not empty"
    assert not root.exists()  # nothing was exported: no folder left behind
    with exclusive_folder(root):
        write_json(root / STATE_FILE, ExportState(_record()).to_json())
    assert sorted(p.name for p in root.iterdir()) == [STATE_FILE]
