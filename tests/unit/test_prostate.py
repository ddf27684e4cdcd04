"""Prostate segmentation with the TAPS network, against lavlab-taps 1.1.2's own pipeline.

The reference is the package itself: its ``build_preprocessing`` (MONAI transforms), its
``ONNXPredictor`` in MONAI's ``sliding_window_inference`` exactly as ``taps.inference.segment``
calls it, its ``gaussian_blur_logits``, MONAI's ``Invertd`` as ``segment`` configures it, and
``taps.segment`` for the final mask. No real prostate MR is in ``../shared/data``: the inputs are
a synthetic T2-like pelvis (``helpers_prostate``) in several geometries and, for the geometry
steps, the real sagittal T1 brain series. Both sides read the same NIfTI file, as the package
only reads NIfTI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from helpers_data import series_ref_of
from helpers_prostate import pelvis, pelvis_affine, write_mr_series
from radloop.core.errors import InputDataError
from radloop.core.geometry import lps_to_ras
from radloop.core.refs import SeriesRef
from radloop.inference.backend import ModelMetadata, TensorSpec
from radloop.inference.packaged import TAPS_MODEL, taps_model_path
from radloop.pipelines.operators.imaging import SegWriter, SegWriterOptions
from radloop.pipelines.operators.prostate import (
    PROSTATE_SEGMENT,
    ProstateOptions,
    ProstateSegmentation,
    largest_component,
    plausibility,
    postprocess,
    preprocess,
    segment_prostate,
)
from radloop.pipelines.operators.writers import SrWriter, SrWriterOptions
from radloop.pipelines.ports import SourceFrame, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.timing import StageTimer
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.ihe_codes import RESULT_IMPLAUSIBLE, RESULT_PLAUSIBILITY

SERIES = SeriesRef("1.2.3", "1.2.3.4")
TOLERANCE = 1e-4


# --- the package's own pipeline, step by step as taps.inference.segment runs it ---------------


def taps_preprocessed(nifti: Path) -> tuple[dict[Any, Any], Any]:
    """``build_preprocessing()`` of the package applied to ``nifti`` (MONAI MetaTensors), and the
    transform itself (``Invertd`` needs the very instance that ran)."""
    from taps.inference import build_preprocessing

    transform = build_preprocessing()
    return dict(transform({"image": str(nifti)})), transform


def taps_probability(
    preprocessed: tuple[dict[Any, Any], Any], logits: torch.Tensor, sigma: float = 2.5
) -> np.ndarray:
    """``segment``'s post-processing of ``logits`` (1, 1, *crop): blur, ``Invertd``, sigmoid."""
    from monai.transforms.post.dictionary import Invertd
    from taps.inference import gaussian_blur_logits

    data, transform = dict(preprocessed[0]), preprocessed[1]
    data["pred"] = gaussian_blur_logits(logits, sigma=sigma)[0]
    inverted = Invertd(
        keys="pred",
        transform=transform,
        orig_keys="image",
        meta_keys="pred_meta_dict",
        orig_meta_keys="image_meta_dict",
        nearest_interp=False,
        to_tensor=True,
    )(data)
    return np.asarray(torch.sigmoid(inverted["pred"][0]).numpy())


def taps_logits(preprocessed: tuple[dict[Any, Any], Any]) -> torch.Tensor:
    """The package's network over the preprocessed image, exactly as ``segment`` runs it."""
    from monai.inferers.utils import sliding_window_inference
    from taps.inference import ROI_SIZE, ONNXPredictor, resolve_checkpoint

    model = ONNXPredictor(resolve_checkpoint(None), device="cpu")
    with torch.inference_mode():
        result = sliding_window_inference(
            preprocessed[0]["image"].unsqueeze(0),
            roi_size=ROI_SIZE,
            sw_batch_size=1,
            predictor=model,
            overlap=0.5,
            mode="gaussian",
        )
    assert isinstance(result, torch.Tensor)
    return result


# --- inputs -------------------------------------------------------------------------------------


def write_nifti(array: np.ndarray, lps_affine: np.ndarray, path: Path) -> Volume:
    """Save ``array`` on ``lps_affine`` as NIfTI (RAS) and return the Volume of what the file holds
    (the header keeps the affine in float32: both pipelines must see the same geometry)."""
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), lps_to_ras(lps_affine)), path)
    image = nib.load(path)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    frames = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.4", f"1.2.3.4.{i + 1}") for i in range(data.shape[0]))
    return Volume(data, lps_to_ras(image.affine), "1.2.3.5", SERIES, "MR", frames, ())


def rotated(affine: np.ndarray, degrees_z: float, degrees_x: float) -> np.ndarray:
    """``affine`` turned about the patient's z then x axes (an oblique acquisition)."""
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = affine.copy()
    out[:3, :3] = rx @ rz @ affine[:3, :3]
    return out


def pelvis_cases() -> dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]]:
    return {
        "axial": lambda: (pelvis(), pelvis_affine()),
        "oblique": lambda: (pelvis(seed=1), rotated(pelvis_affine(), 12.0, -8.0)),
        "flipped-rows": lambda: (pelvis(seed=2)[:, ::-1].copy(), pelvis_affine() @ _flip_rows()),
        "thin-slices": lambda: (
            pelvis((40, 96, 96), (1.5, 1.0, 1.0), seed=3),
            pelvis_affine((40, 96, 96), (1.5, 1.0, 1.0)),
        ),
    }


def _flip_rows() -> np.ndarray:
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, 111.0
    return flip


# --- geometry and intensity steps, no network -----------------------------------------------


@pytest.mark.parametrize("case", list(pelvis_cases()))
def test_preprocessing_equals_the_packages(case: str, tmp_path: Path) -> None:
    array, affine = pelvis_cases()[case]()
    volume = write_nifti(array, affine, tmp_path / "t2.nii.gz")
    image, _ = preprocess(volume)
    theirs = taps_preprocessed(tmp_path / "t2.nii.gz")[0]["image"][0].numpy()
    assert image.shape == theirs.shape
    assert float(np.abs(image - theirs).max()) <= TOLERANCE


def test_preprocessing_equals_the_packages_on_the_real_sagittal_t1(t1_volume: Volume, tmp_path: Path) -> None:
    """A real MR with exactly-zero background, sagittal, 1 mm: every step of the geometry."""
    volume = write_nifti(np.asarray(t1_volume.array), t1_volume.affine, tmp_path / "t1.nii.gz")
    image, grids = preprocess(volume)
    theirs = taps_preprocessed(tmp_path / "t1.nii.gz")[0]["image"][0].numpy()
    assert image.shape == theirs.shape
    assert float(np.abs(image - theirs).max()) <= TOLERANCE
    assert grids.resampled_shape == (round(169 / 0.8) + 1, round(255 / 0.8) + 1, round(255 / 3) + 1)


@pytest.mark.parametrize("case", ["axial", "oblique", "flipped-rows"])
def test_postprocessing_equals_the_packages_invertd(case: str, tmp_path: Path) -> None:
    """The same logits through both: smoothing, crop and resampling undone, orientation undone."""
    array, affine = pelvis_cases()[case]()
    volume = write_nifti(array, affine, tmp_path / "t2.nii.gz")
    image, grids = preprocess(volume)
    data = taps_preprocessed(tmp_path / "t2.nii.gz")
    logits = (2.5 * image - 1.0).astype(np.float32)  # any field on the crop grid will do
    from monai.data.meta_tensor import MetaTensor

    source = data[0]["image"]
    tensor = MetaTensor(torch.from_numpy(logits)[None, None], meta=source.meta)
    tensor.applied_operations = source.applied_operations
    theirs = taps_probability(data, tensor)
    ours = postprocess(logits, grids, sigma=2.5)
    assert ours.shape == theirs.shape == volume.array.shape
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE
    assert dice(ours > 0.55, theirs > 0.55) >= 0.999


def test_largest_component_keeps_the_biggest_26_connected_blob() -> None:
    from taps.inference import _largest_component

    rng = np.random.default_rng(0)
    mask = rng.random((30, 30, 12)) > 0.7
    theirs, _ = _largest_component(mask.astype(np.uint8))
    assert np.array_equal(largest_component(mask), theirs.astype(bool))
    assert not largest_component(np.zeros((4, 4, 4), dtype=bool)).any()


# --- the whole pipeline with the real network --------------------------------------------------


@pytest.mark.slow
def test_probability_and_mask_equal_the_packages_own_pipeline(tmp_path: Path) -> None:
    """The synthetic pelvis through the package (sliding window one window per call, as it runs)
    and through radloop (batched windows): probability within 1e-4, masks Dice ≥ 0.999.

    The network was not trained on phantoms: its probability stays far below the package's 0.55
    (both find nothing there), so the masks are also compared at a threshold of half the maximum
    probability (the same number passed to ``taps.segment(threshold=...)`` and to the operator).
    The phantom's body touches every edge, so the crop keeps the whole image (no 0.5 margin)."""
    import taps

    nifti = tmp_path / "t2.nii.gz"
    volume = write_nifti(pelvis(), pelvis_affine(), nifti)
    data = taps_preprocessed(nifti)
    theirs = taps_probability(data, taps_logits(data))
    backend = _taps_backend()
    ours = segment_prostate(volume, backend, ProstateOptions(sw_batch_size=4), StageTimer())
    assert ours.probability.shape == theirs.shape
    max_abs = float(np.abs(ours.probability - theirs).max())
    print(f"\nprobability: max {theirs.max():.5f}, max abs difference {max_abs:.2e}")
    assert max_abs <= TOLERANCE

    assert not ours.mask.any()  # at the default 0.55, as the package (BlankMaskError) below
    with pytest.raises(taps.inference.BlankMaskError):
        taps.segment(nifti, tmp_path / "blank.nii.gz", None, device="cpu", exact=True)
    threshold = float(theirs.max()) / 2
    out = taps.segment(nifti, tmp_path / "mask.nii.gz", None, device="cpu", exact=True, threshold=threshold)
    package_mask = np.asarray(nib.load(out).get_fdata()) > 0
    our_mask = largest_component(ours.probability > np.float32(threshold))
    print(f"masks at {threshold:.5f}: {int(package_mask.sum())} / {int(our_mask.sum())} voxels")
    assert package_mask.sum() > 100
    assert dice(our_mask, package_mask) >= 0.999


def _taps_backend() -> Any:
    from radloop.inference.packaged import taps_backend

    return taps_backend(taps_model_path())


# --- plausibility, outcome and the SR flag ------------------------------------------------------


class BrightIsProstate:
    """A stand-in network: logit +8 where the normalised image is above ``level``, else −8."""

    def __init__(self, level: float) -> None:
        self.level = level
        shape = (-1, 1, 128, 128, 32)
        self._metadata = ModelMetadata(
            TAPS_MODEL,
            "test",
            (TensorSpec("input", "float32", shape),),
            (TensorSpec("output", "float32", shape),),
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["input"]
        return {"output": np.where(x > self.level, 8.0, -8.0).astype(np.float32)}


def _ctx(tmp_path: Path) -> OperatorContext:
    return OperatorContext(job_id=1, idempotency_key="prostate-test", workdir=tmp_path)


def test_plausibility_names_the_volume_and_extent() -> None:
    affine = np.diag([3.0, 0.8, 0.8, 1.0])
    mask = np.zeros((20, 100, 100), dtype=bool)
    mask[8:12, 40:60, 40:60] = True  # 4·20·20 voxels of 1.92 µL = 3.1 mL
    check = plausibility(mask, affine, ProstateOptions())
    assert check.problem == "3.1 mL (expected 15–80 mL)"
    mask[2:18, 20:80, 20:80] = True  # 16 × 48 × 48 mm, 110.6 mL
    assert plausibility(mask, affine, ProstateOptions()).problem == "110.6 mL (expected 15–80 mL)"
    flat = np.zeros((20, 300, 300), dtype=bool)
    flat[9:11, 10:290, 100:200] = True  # 6 × 224 × 80 mm, 86 mL
    check = plausibility(flat, affine, ProstateOptions(volume_ml=(1.0, 200.0)))
    assert check.problem == "extent 6.0 × 224.0 × 80.0 mm (expected 10–150 mm)"
    good = np.zeros((20, 100, 100), dtype=bool)
    good[5:15, 25:75, 25:75] = True  # 30 × 40 × 40 mm, 48 mL
    assert plausibility(good, affine, ProstateOptions()).problem is None
    assert (
        plausibility(np.zeros_like(good), affine, ProstateOptions()).problem == "no prostate found (0.0 mL)"
    )


def test_implausible_result_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    volume = write_nifti(pelvis(), pelvis_affine(), tmp_path / "t2.nii.gz")
    operator = ProstateSegmentation(ProstateOptions(), backend=BrightIsProstate(level=0.3))
    with pytest.raises(InputDataError, match=r"^result implausible: \d+\.\d mL \(expected 15–80 mL\)$"):
        operator.run(_ctx(tmp_path), {"volume": volume})


def test_flagged_result_keeps_the_mask_and_the_sr_carries_the_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_implausible: flag``: the job goes on, the SEG is written and the SR flags the result."""
    paths = write_mr_series(tmp_path / "t2", pelvis(), pelvis_affine())
    volume = load_volume(paths, series_ref_of(paths[0]))
    ctx = _ctx(tmp_path)
    operator = ProstateSegmentation(
        ProstateOptions(on_implausible="flag"), backend=BrightIsProstate(level=0.3)
    )
    with caplog.at_level(logging.WARNING):
        labelmap = operator.run(ctx, {"volume": volume})["labelmap"]
    assert "result implausible" in caplog.text
    assert labelmap.flags == (RESULT_IMPLAUSIBLE,)
    assert labelmap.segments == (PROSTATE_SEGMENT,)
    assert labelmap.array.any()
    assert labelmap.array.shape == volume.array.shape
    seg = SegWriter(SegWriterOptions()).run(ctx, {"labelmap": labelmap})["seg"]
    sr = SrWriter(SrWriterOptions()).run(ctx, {"labelmap": labelmap, "seg": seg})["sr"]
    report = hd.sr.srread(sr.paths[0])
    evaluations = [
        item
        for item in _walk(report.ContentSequence)
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == RESULT_PLAUSIBILITY.value
    ]
    assert [e.ConceptCodeSequence[0].CodeValue for e in evaluations] == [RESULT_IMPLAUSIBLE.value]
    segment = pydicom.dcmread(seg.paths[0]).SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"


def _walk(sequence: Any) -> Any:
    for item in sequence:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# --- the model store ------------------------------------------------------------------------------


def test_import_taps_records_the_licence_and_the_store_serves_the_wheel_until_then(tmp_path: Path) -> None:
    from radloop.inference.model_import import import_taps, read_package_provenance
    from radloop.inference.store import ModelStore

    store = ModelStore(tmp_path / "models")
    from_wheel = store.find(TAPS_MODEL)
    assert from_wheel is not None and from_wheel.path == taps_model_path()
    stored = import_taps(store)
    assert store.find(TAPS_MODEL) == stored and stored.folder == tmp_path / "models" / TAPS_MODEL / "1.1.2"
    provenance = read_package_provenance(stored)
    assert provenance is not None
    assert provenance["license"] == "MIT" and provenance["package"] == "lavlab-taps"
    assert provenance["sha256"] == stored.spec.sha256
    spec = stored.spec
    assert (spec.format, spec.roi_size, spec.spacing, spec.threshold) == (
        "onnx",
        [128, 128, 32],
        [0.8, 0.8, 3.0],
        0.55,
    )
    assert [(label.name, label.type.value) for label in spec.labels] == [("Prostate", "41216001")]
    metadata = _taps_backend().metadata
    assert [t.name for t in metadata.inputs] == [t.name for t in spec.inputs] == ["input"]
