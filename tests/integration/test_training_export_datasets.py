"""Training export end to end on real data: reviewed brain-extraction results → MONAI, MSD, nnU-Net.

The site: the real 3T T1 series (its AI mask from the real deepbet networks) plus five synthetic
patients (slabs of the same series copied with new UIDs, names and IDs, one of them with two
studies), each with an AI SEG written by radloop's SEG writer and a decision recorded through
the review app's functions: accepted, edited (an edited SEG), or rejected. The exports are then
checked by the tools that read them: MONAI's ``load_decathlon_datalist`` and one training
iteration, nnU-Net v2's ``verify_dataset_integrity``, dcm2niix for the image, and pydicom
geometry read straight from the source headers.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from sqlalchemy.engine import Engine

import helpers_reviews as hr
from peers import require_binary
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.errors import ExportError
from radloop.core.models import ReviewDecision
from radloop.core.settings import Settings, load_settings
from radloop.pipelines.operators.brain_extraction import BrainExtraction, BrainExtractionOptions
from radloop.pipelines.registry import OperatorContext
from radloop.training_export import ExportFormat, ExportRequest, export_dataset
from radloop.training_export.deid import Pseudonymizer
from radloop.training_export.state import STATE_FILE

pytestmark = pytest.mark.slow

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REVIEWERS = ("alice.smith@hospital.example", "bob.jones@hospital.example")
SLAB = slice(60, 108)  # 48 mid-sagittal slices of the 170


@dataclass(frozen=True)
class SiteCase:
    """One reviewed AI result of the site, with what the test knows about it."""

    name: str
    series: hr.StoredSeries
    decision: ReviewDecision
    ai_mask: npt.NDArray[np.bool_]
    final_mask: npt.NDArray[np.bool_] | None


@dataclass(frozen=True)
class Site:
    """A radloop data folder and database holding reviewed results."""

    settings: Settings
    engine: Engine
    cases: dict[str, SiteCase]

    def identifiers(self) -> list[str]:
        """Every name, ID, date and UID of every patient, study and image, and the reviewers."""
        out = [*REVIEWERS, "19800501"]  # the real series' PatientBirthDate
        for case in self.cases.values():
            out += case.series.identifiers()
        return sorted({x for x in out if x})


def _deepbet_mask(series: hr.StoredSeries, workdir: Path) -> npt.NDArray[np.bool_]:
    """The real deepbet brain mask of a series (its labelmap on the volume grid)."""
    ctx = OperatorContext(job_id=0, idempotency_key="training-export-test", workdir=workdir)
    labelmap = BrainExtraction(BrainExtractionOptions()).run(ctx, {"volume": series.volume})["labelmap"]
    return np.asarray(labelmap.array > 0)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Site:
    """Six patients, seven reviewed results (one re-reviewed), on the real T1 series."""
    root = tmp_path_factory.mktemp("export-site")
    settings = load_settings(data_dir=root / "data", secret_key="training-export-test-secret-key")
    db.upgrade(settings)
    engine = db.make_engine(settings)
    store = InstanceStore(settings.data_dir, engine)
    files = sorted(t1_series_dir.glob("*.dcm"))
    real = hr.ingest(store, files)
    real_mask = _deepbet_mask(real, root / "deepbet")
    plan = [  # name, patient (ID, name, study date), slab start, decision
        ("P1a", ("RADLOOP-TEST-PATIENT-0001", "Testpatient^Anna", "20230111"), 60, ReviewDecision.accepted),
        ("P1b", ("RADLOOP-TEST-PATIENT-0001", "Testpatient^Anna", "20240212"), 70, ReviewDecision.edited),
        ("P2", ("RADLOOP-TEST-PATIENT-0002", "Testpatient^Bert", "20230313"), 60, ReviewDecision.accepted),
        ("P3", ("RADLOOP-TEST-PATIENT-0003", "Testpatient^Cleo", "20230414"), 60, ReviewDecision.rejected),
        ("P4", ("RADLOOP-TEST-PATIENT-0004", "Testpatient^Dirk", "20230515"), 65, ReviewDecision.edited),
        ("P5", ("RADLOOP-TEST-PATIENT-0005", "Testpatient^Emma", "20230616"), 60, ReviewDecision.accepted),
    ]
    cases = {"P0": SiteCase("P0", real, ReviewDecision.edited, real_mask, hr.edit(real_mask))}
    for name, (pid, pname, date), start, decision in plan:
        copied, origin = hr.copy_as_patient(
            files[start : start + 48], root / "copies" / name, pid, pname, date
        )
        series = hr.ingest(store, copied)
        mask = hr.slab_mask(real, real_mask, series, origin)
        final = hr.edit(mask) if decision == ReviewDecision.edited else None
        cases[name] = SiteCase(name, series, decision, mask, final)
    for hour, case in enumerate(cases.values()):
        job = hr.add_job(engine, case.series, f"job-{case.name}")
        result = hr.add_ai_result(engine, settings.data_dir, job, case.series, case.ai_mask)
        if case.name == "P2":  # first rejected by one reviewer, then accepted by another: the latter counts
            hr.review(
                settings,
                engine,
                result,
                case.series,
                ReviewDecision.rejected,
                REVIEWERS[1],
                T0 + timedelta(minutes=30),
            )
        hr.review(
            settings,
            engine,
            result,
            case.series,
            case.decision,
            REVIEWERS[hour % 2],
            T0 + timedelta(hours=hour),
            case.final_mask,
        )
    return Site(settings, engine, cases)


def _export(site: Site, out: Path, fmt: ExportFormat, **options: object) -> dict[str, object]:
    request = ExportRequest(pipeline=hr.PIPELINE, out_dir=out, format=fmt, **options)  # type: ignore[arg-type]
    return export_dataset(site.settings, site.engine, request).to_dict()


Export = tuple[Path, dict[str, object]]


@pytest.fixture(scope="module")
def monai_export(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """The default export (accepted and edited) as a MONAI datalist, 40 % of patients for validation."""
    out = tmp_path_factory.mktemp("monai")
    return out, _export(site, out, ExportFormat.monai, val_fraction=0.4, seed=7)


@pytest.fixture(scope="module")
def nnunet_export(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """The same as an nnU-Net v2 raw dataset (the root is ``Dataset501_BrainExtraction``)."""
    raw = tmp_path_factory.mktemp("nnUNet_raw")
    summary = _export(site, raw, ExportFormat.nnunet, val_fraction=0.4, seed=7, dataset_id=501)
    return raw / "Dataset501_BrainExtraction", summary


@pytest.fixture(scope="module")
def msd_export(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """Every decision, rejected included, as an MSD dataset."""
    out = tmp_path_factory.mktemp("msd")
    return out, _export(
        site, out, ExportFormat.msd, decisions=frozenset(ReviewDecision), val_fraction=0.4, seed=7
    )


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifests(root: Path) -> dict[str, dict[str, Any]]:
    """Provenance manifests by the series pseudonym of their source."""
    out = {}
    for path in (root / "provenance").glob("*.json"):
        manifest = _json(path)
        out[manifest["source"]["series"]] = manifest
    return out


def _case_of(site: Site, manifest: dict[str, Any]) -> SiteCase:
    ids = Pseudonymizer.from_settings(site.settings)
    by_series = {ids.series(c.series.ref.SeriesInstanceUID): c for c in site.cases.values()}
    return by_series[manifest["source"]["series"]]


# --------------------------------------------------------------------------- what the export holds


def test_summary_counts_cases_per_split_and_decision(monai_export: Export) -> None:
    _, summary = monai_export
    assert (summary["new"], summary["updated"], summary["unchanged"], summary["removed"]) == (6, 0, 0, 0)
    assert summary["failed"] == []
    cases: dict[str, dict[str, int]] = summary["cases"]  # type: ignore[assignment]
    per_decision = {
        d: cases["training"][d] + cases["validation"][d] for d in ("accepted", "edited", "rejected")
    }
    assert per_decision == {"accepted": 3, "edited": 3, "rejected": 0}  # P3 (rejected) left out
    assert summary["patients"] == {"training": 3, "validation": 2}  # round(0.4 × 5 patients)


def test_monai_datalist_loads_and_one_training_iteration_runs(monai_export: Export) -> None:
    """MONAI reads the datalist as it is; a small 3-D UNet takes one optimiser step on it (CPU)."""
    import torch
    from monai.data import DataLoader, Dataset, load_decathlon_datalist
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandSpatialCropd, ScaleIntensityd
    from monai.utils import set_determinism

    root, _ = monai_export
    datalist = root / "datalist.json"
    training = load_decathlon_datalist(
        datalist, is_segmentation=True, data_list_key="training", base_dir=root
    )
    validation = load_decathlon_datalist(
        datalist, is_segmentation=True, data_list_key="validation", base_dir=root
    )
    assert len(training) == 4 and len(validation) == 2
    assert all(Path(item[key]).is_file() for item in training + validation for key in ("image", "label"))
    assert _json(datalist)["labels"] == {"0": "background", "1": "Brain"}

    loaded = LoadImaged(keys=["image", "label"])(validation[0])
    np.testing.assert_allclose(loaded["image"].affine, loaded["label"].affine, atol=1e-6)
    assert loaded["image"].shape == loaded["label"].shape
    assert set(np.unique(loaded["label"].numpy())) == {0.0, 1.0}

    set_determinism(seed=0)
    transforms = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            ScaleIntensityd(keys="image"),
            RandSpatialCropd(keys=["image", "label"], roi_size=(32, 32, 32), random_size=False),
        ]
    )
    batch = next(iter(DataLoader(Dataset(training, transforms), batch_size=2, num_workers=0)))
    assert batch["image"].shape == batch["label"].shape == (2, 1, 32, 32, 32)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=0)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(net(batch["image"]), batch["label"])
    loss.backward()
    optimiser.step()
    set_determinism(seed=None)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_nnunet_dataset_passes_nnunets_integrity_check(
    nnunet_export: Export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """nnU-Net v2's own ``verify_dataset_integrity``, with SimpleITK reading every image and label."""
    root, summary = nnunet_export
    assert summary["new"] == 6
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(root.parent if name == "nnUNet_raw" else tmp_path / name))
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    capfd.readouterr()
    verify_dataset_integrity(str(root), num_processes=1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "Warning" not in printed and "Error" not in printed, printed

    dataset = _json(root / "dataset.json")
    assert dataset["channel_names"] == {"0": "MRI"}
    assert dataset["labels"] == {"background": 0, "Brain": 1}
    assert dataset["numTraining"] == 6 and dataset["file_ending"] == ".nii.gz"
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    assert [i.replace("_0000.nii.gz", ".nii.gz") for i in images] == labels and len(labels) == 6
    (fold,) = _json(root / "splits_final.json")
    patients = {side: {case.split("_")[0] for case in fold[side]} for side in ("train", "val")}
    assert not patients["train"] & patients["val"]
    assert sorted(fold["train"] + fold["val"]) == [name.removesuffix(".nii.gz") for name in labels]


def test_msd_dataset_json_and_rejected_cases_when_asked_for(site: Site, msd_export: Export) -> None:
    root, summary = msd_export
    dataset = _json(root / "dataset.json")
    assert dataset["labels"] == {"0": "background", "1": "Brain"} and dataset["modality"] == {"0": "MRI"}
    assert dataset["tensorImageSize"] == "3D" and dataset["test"] == [] and dataset["numTest"] == 0
    entries = dataset["training"] + dataset["validation"]
    assert len(entries) == 7 and dataset["numTraining"] == len(dataset["training"])
    assert all((root / e[key]).is_file() for e in entries for key in ("image", "label"))
    cases: dict[str, dict[str, int]] = summary["cases"]  # type: ignore[assignment]
    assert cases["training"]["rejected"] + cases["validation"]["rejected"] == 1
    (rejected,) = [m for m in _manifests(root).values() if m["review"]["decision"] == "rejected"]
    assert _case_of(site, rejected).name == "P3"
    assert (
        rejected["agreement"] is None
        and rejected["review"]["label_source"] == "AI mask (rejected by the reviewer)"
    )
    assert rejected["voxels"]["final"] == rejected["voxels"]["ai"]


def test_provenance_manifests_name_model_review_and_agreement(site: Site, monai_export: Export) -> None:
    root, _ = monai_export
    ids = Pseudonymizer.from_settings(site.settings)
    names = list(site.cases)
    for manifest in _manifests(root).values():
        case = _case_of(site, manifest)
        hour = names.index(case.name)
        assert manifest["model"] == {"name": "deepbet", "version": "1.0.2"}
        assert manifest["pipeline"] == {"name": "brain-extraction", "version": "1.0.0"}
        assert manifest["source"]["patient"] == ids.patient(case.series.patient_id)
        assert manifest["source"]["study"] == ids.study(case.series.ref.StudyInstanceUID)
        assert manifest["source"]["images"] == len(case.series.sop_instance_uids)
        assert manifest["review"]["decision"] == case.decision.value
        assert manifest["review"]["reviewer"] == ids.reviewer(REVIEWERS[hour % 2])
        assert manifest["review"]["decision_time"] == (T0 + timedelta(hours=hour)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        final = case.final_mask if case.final_mask is not None else case.ai_mask
        expected = 2 * int((case.ai_mask & final).sum()) / int(case.ai_mask.sum() + final.sum())
        assert manifest["agreement"]["dice"] == pytest.approx(expected, abs=1e-6)
        assert (manifest["agreement"]["dice"] < 1.0) == (case.decision == ReviewDecision.edited)
        assert manifest["voxels"] == {
            "ai": {"Brain": int(case.ai_mask.sum())},
            "final": {"Brain": int(final.sum())},
        }
        assert (root / manifest["image"]).is_file() and (root / manifest["label"]).is_file()


# --------------------------------------------------------------------------- geometry


def _voxel_of_each_pixel(ds: pydicom.Dataset, affine: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """NIfTI voxel (i, j, k) of every pixel (row, column) of one DICOM slice, from its own header."""
    position = np.array(ds.ImagePositionPatient, dtype=float)
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(x) for x in ds.PixelSpacing)
    rows, columns = np.mgrid[0 : int(ds.Rows), 0 : int(ds.Columns)]
    lps = (
        position
        + columns[..., None] * column_spacing * orientation[:3]
        + rows[..., None] * row_spacing * orientation[3:]
    )
    ras = np.concatenate([lps * [-1.0, -1.0, 1.0], np.ones(lps.shape[:2] + (1,))], axis=-1)
    ijk = (np.linalg.inv(affine) @ ras.reshape(-1, 4).T)[:3].T.reshape(lps.shape)
    assert np.abs(ijk - np.rint(ijk)).max() < 1e-3, "a pixel centre falls between voxel centres"
    return np.rint(ijk).astype(np.intp)


def _affine_from_headers(paths: tuple[Path, ...]) -> npt.NDArray[np.float64]:
    """The series' RAS affine, straight from its headers, on the closest-RAS voxel axes (as dcm2niix)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = sorted((np.array(h.ImagePositionPatient, dtype=float) for h in headers), key=normal.dot)
    row_spacing, column_spacing = (float(x) for x in headers[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = (positions[-1] - positions[0]) / (len(positions) - 1)  # frame → next slice
    lps[:3, 1] = orientation[3:] * row_spacing  # row → down the column direction
    lps[:3, 2] = orientation[:3] * column_spacing  # column → along the row direction
    lps[:3, 3] = positions[0]
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    grid = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)
    return np.asarray(nib.as_closest_canonical(grid).affine)


@pytest.mark.parametrize("name", ["P0", "P4"])
def test_image_and_label_lie_on_the_source_series_grid(site: Site, monai_export: Export, name: str) -> None:
    """Every source pixel, placed by its own DICOM header, lands on a voxel with its value and its label."""
    root, _ = monai_export
    manifest = next(m for m in _manifests(root).values() if _case_of(site, m).name == name)
    case = site.cases[name]
    image, label = nib.load(root / manifest["image"]), nib.load(root / manifest["label"])
    assert image.shape == label.shape
    np.testing.assert_array_equal(image.affine, label.affine)
    assert int(image.header["sform_code"]) == int(image.header["qform_code"]) == 1
    np.testing.assert_allclose(image.header.get_qform(), image.affine, atol=1e-4)
    np.testing.assert_allclose(image.affine, _affine_from_headers(case.series.volume.source_paths), atol=1e-4)
    pixels, labels = np.asarray(image.dataobj), np.asarray(label.dataobj)
    final = case.final_mask if case.final_mask is not None else case.ai_mask
    for path in case.series.volume.source_paths:
        ds = pydicom.dcmread(path)
        ijk = _voxel_of_each_pixel(ds, image.affine)
        assert (ijk >= 0).all() and (ijk < np.array(image.shape)).all()
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_allclose(pixels[ijk[..., 0], ijk[..., 1], ijk[..., 2]], expected, rtol=1e-6)
        frame = [f.sop_instance_uid for f in case.series.volume.source_frames].index(str(ds.SOPInstanceUID))
        np.testing.assert_array_equal(labels[ijk[..., 0], ijk[..., 1], ijk[..., 2]], final[frame])
    assert (
        len(case.series.volume.source_paths) * ds.Rows * ds.Columns == pixels.size
    )  # every voxel was visited


def test_image_equals_dcm2niix_conversion_of_the_source(
    site: Site, monai_export: Export, tmp_path: Path
) -> None:
    """dcm2niix (the reference DICOM → NIfTI converter) gives the same voxels and affine (within 1e-4)."""
    dcm2niix = require_binary("dcm2niix")
    root, _ = monai_export
    case = site.cases["P0"]
    source = case.series.volume.source_paths[0].parent
    subprocess.run(
        [dcm2niix, "-p", "n", "-z", "n", "-b", "n", "-f", "reference", "-o", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    reference = nib.as_closest_canonical(nib.load(tmp_path / "reference.nii"))
    manifest = next(m for m in _manifests(root).values() if _case_of(site, m).name == "P0")
    ours = nib.load(root / manifest["image"])
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-4)
    np.testing.assert_allclose(ours.get_fdata(), reference.get_fdata(), rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------- de-identification, reproducibility


def test_no_identifier_in_any_exported_file_name_header_or_json(
    site: Site, monai_export: Export, nnunet_export: Export, msd_export: Export
) -> None:
    """Names, IDs, dates and UIDs of the source, and the reviewers: in no path, no byte, no NIfTI header."""
    needles = site.identifiers()
    assert {"d2n_Philips_3T_R571", "20210902", "19800501", "1.2.826.0.1.3680043.8.498."} <= set(needles)
    assert any(n.startswith("1.3.46.670589.") for n in needles)  # the scanner maker's UID root
    source = site.cases["P4"].series  # the scan finds them where they are: in a source file
    assert all(n.encode() in source.volume.source_paths[0].read_bytes() for n in source.identifiers())
    scanned = 0
    for root, _ in (monai_export, nnunet_export, msd_export):
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            content = gzip.decompress(data) if path.suffix == ".gz" else data
            relative = str(path.relative_to(root))
            found = [n for n in needles if n in relative or n.encode() in content or n.encode() in data]
            assert not found, f"{relative} holds {found[:3]}"
            if path.suffix == ".gz":
                header = nib.load(path).header
                assert all(
                    not bytes(header[f].tobytes()).strip(b"\x00") for f in ("descrip", "aux_file", "db_name")
                )
                assert not header.extensions
            scanned += 1
    assert scanned == (3 * 6 + 2) + (3 * 6 + 3) + (3 * 7 + 2)  # images, labels, manifests; index, state


def test_same_seed_same_bytes_and_a_rerun_changes_nothing(
    site: Site, monai_export: Export, tmp_path: Path
) -> None:
    root, _ = monai_export
    before = _files(root)
    again = _export(site, tmp_path / "again", ExportFormat.monai, val_fraction=0.4, seed=7)
    assert again["new"] == 6
    assert _files(tmp_path / "again") == before  # every JSON and NIfTI byte
    rerun = _export(site, root, ExportFormat.monai, val_fraction=0.4, seed=7)
    assert (rerun["new"], rerun["unchanged"]) == (0, 6)
    assert _files(root) == before


def test_split_is_by_patient(site: Site, monai_export: Export) -> None:
    """No patient on both sides; a patient's two studies stay together."""
    ids = Pseudonymizer.from_settings(site.settings)
    anna = ids.patient("RADLOOP-TEST-PATIENT-0001")  # two studies, two cases
    datalist = _json(monai_export[0] / "datalist.json")
    sides = {
        side: [Path(e["image"]).name.split("_")[0] for e in datalist[side]]
        for side in ("training", "validation")
    }
    assert not set(sides["training"]) & set(sides["validation"])
    assert len(set(sides["training"]) | set(sides["validation"])) == 5
    assert (sides["training"] + sides["validation"]).count(anna) == 2


# --------------------------------------------------------------------------- incremental exports


def test_incremental_export_adds_new_cases_and_keeps_every_side(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "incremental"
    first = _export(site, out, ExportFormat.monai, val_fraction=0.4, seed=3, since=T0 + timedelta(hours=3))
    assert first["new"] == 3  # P2, P4, P5 (P3 is rejected)
    state = _json(out / STATE_FILE)
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "imagesTr").iterdir()}
    second = _export(site, out, ExportFormat.monai, val_fraction=0.4, seed=3)
    assert (second["new"], second["unchanged"], second["updated"]) == (3, 3, 0)
    after = _json(out / STATE_FILE)
    assert {p: after["patients"][p] for p in state["patients"]} == state["patients"]
    assert all((p.stat().st_mtime_ns, p.read_bytes()) == kept for p, kept in written.items())
    assert len(after["cases"]) == 6 and second["patients"] == {"training": 3, "validation": 2}
    with pytest.raises(ExportError, match="seed"):
        _export(site, out, ExportFormat.monai, val_fraction=0.4, seed=4)


def test_a_case_rejected_on_re_review_leaves_the_dataset(
    site: Site, monai_export: Export, tmp_path: Path
) -> None:
    """A later decision counts: an accepted case rejected since is removed by the next export."""
    import sqlite3

    source, copy = site.settings.database_url.removeprefix("sqlite:///"), tmp_path / "radloop.db"
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    settings = site.settings.model_copy(
        update={"database": site.settings.database.model_copy(update={"url": f"sqlite:///{copy}"})}
    )
    engine = db.make_engine(settings)
    case = site.cases["P5"]
    with engine.connect() as conn:
        (result_id,) = conn.exec_driver_sql(
            "SELECT r.id FROM result r JOIN job j ON j.id = r.job_id WHERE j.idempotency_key = 'job-P5'"
        ).one()
    hr.review(
        settings,
        engine,
        result_id,
        case.series,
        ReviewDecision.rejected,
        REVIEWERS[0],
        T0 + timedelta(days=1),
    )
    root = tmp_path / "dataset"
    shutil.copytree(monai_export[0], root)
    request = ExportRequest(
        pipeline=hr.PIPELINE, out_dir=root, format=ExportFormat.monai, val_fraction=0.4, seed=7
    )
    summary = export_dataset(settings, engine, request).to_dict()
    assert (summary["removed"], summary["unchanged"], summary["new"]) == (1, 5, 0)
    datalist = _json(root / "datalist.json")
    assert len(datalist["training"]) + len(datalist["validation"]) == 5
    assert len(list((root / "imagesTr").iterdir())) == len(list((root / "provenance").iterdir())) == 5


# --------------------------------------------------------------------------- entry points


def test_cli_and_api_export_the_same_dataset(site: Site, tmp_path: Path) -> None:
    """``radloop export dataset`` (a real process) and ``POST /api/v1/exports`` run the same service."""
    from fastapi.testclient import TestClient

    from radloop import services
    from radloop.api import create_app

    env = {
        "RADLOOP_DATA_DIR": str(site.settings.data_dir),
        "RADLOOP_SECRET_KEY": site.settings.secret_key.get_secret_value(),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    command = [
        sys.executable,
        "-m",
        "radloop.cli",
        "export",
        "dataset",
        "--pipeline",
        hr.PIPELINE,
        "--format",
        "monai",
        "--out",
        str(tmp_path / "cli"),
        "--val-fraction",
        "0.4",
        "--seed",
        "7",
        "--decisions",
        "accepted",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "this run: 3 new, 0 updated, 0 unchanged, 0 removed, 0 failed" in done.stdout
    assert "validation" in done.stdout and "total" in done.stdout

    client = TestClient(create_app(site.settings))
    auth = {
        "Authorization": f"Bearer {services.create_token(site.engine, 'export-test', ['data-steward']).token}"
    }
    body = {
        "name": "brain-accepted",
        "pipeline": hr.PIPELINE,
        "format": "monai",
        "decisions": ["accepted"],
        "val_fraction": 0.4,
        "seed": 7,
    }
    made = client.post("/api/v1/exports", json=body, headers=auth)
    assert made.status_code == 200, made.text
    root = Path(made.json()["dataset_root"])
    assert root == site.settings.data_dir / "exports" / "brain-accepted" and made.json()["new"] == 3
    assert _files(root) == _files(tmp_path / "cli")
    listed = client.get("/api/v1/exports", headers=auth).json()
    assert [(e["format"], e["decisions"], sum(e["cases"].values())) for e in listed] == [
        ("monai", ["accepted"], 3)
    ]
    assert client.post("/api/v1/exports", json={**body, "seed": 8}, headers=auth).status_code == 409
    assert client.post("/api/v1/exports", json={**body, "name": "../x"}, headers=auth).status_code == 422
    assert client.post("/api/v1/exports", json=body).status_code == 401
