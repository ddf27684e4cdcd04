"""Inference in process: preprocessing, sliding windows, and the reference pipelines for
user-supplied models run end to end on real data (the CT series, pydicom's chest CR).

The models are tiny networks built by the tests (`tests/tiny_models.py`), whose answer is known:
a smoothed HU threshold for CT, pooled-intensity scores for the chest X-ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

import tiny_models as tm
from helpers_data import ct_series_paths, pydicom_test_file, series_ref_of
from radloop.core.errors import ModelNotFoundError
from radloop.core.settings import InferenceSettings
from radloop.inference.model_spec import ModelSpec
from radloop.inference.onnx_runtime import OnnxRuntimeBackend
from radloop.inference.preprocess import prepare, restore
from radloop.inference.resolve import ModelResolver
from radloop.inference.sliding_window import run_model
from radloop.inference.store import ModelStore
from radloop.pipelines.catalog import REFERENCE_DIR
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.operators.roi import crop, crop_box, region_box
from radloop.pipelines.ports import Findings, LabelMap, SeriesInput, SourceFrame, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.spec import PIPELINE_INPUT, load_pipeline


def run_pipeline(name: str, series: SeriesInput, ctx: OperatorContext) -> dict[str, dict[str, Any]]:
    """Every operator of a reference pipeline in order, as the job runner does (no database)."""
    pipeline = load_pipeline(REFERENCE_DIR / f"{name}.yaml", builtin_registry())
    values: dict[str, dict[str, Any]] = {PIPELINE_INPUT: {"series": series}}
    for bound in pipeline.steps:
        inputs = {
            port: values[src.split(".")[0]][src.split(".")[1]] for port, src in bound.step.inputs.items()
        }
        values[bound.step.id] = bound.instantiate().run(ctx, inputs)
    return values


def context(tmp_path: Path, store: ModelStore, key: str = "job") -> OperatorContext:
    return OperatorContext(
        job_id=1,
        idempotency_key=key,
        workdir=tmp_path / "work",
        models=ModelResolver(InferenceSettings(), store),
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """ct_organs and ct_spleen (ONNX), ct_liver (a MONAI bundle), cxr_classifier (ONNX)."""
    folder = tmp_path_factory.mktemp("inference")
    store = ModelStore(folder / "models")
    seg = tm.save_onnx(tm.SmoothThreshold(), torch.zeros(1, 1, 8, 8, 8), folder / "seg.onnx")
    store.add(seg, "ct_organs", "1", tm.segmenter_spec())
    store.add(seg, "ct_spleen", "1", tm.segmenter_spec(label="Spleen"))
    store.add(
        tm.make_bundle(folder / "bundle"),
        "ct_liver",
        "1",
        {"labels": [{"value": 1, "name": "Liver", "type": {"value": "10200004", "meaning": "Liver"}}]},
    )
    cls = tm.save_onnx(
        tm.PooledScores(), torch.zeros(1, 1, 64, 64), folder / "cls.onnx", dynamic_spatial=False
    )
    store.add(cls, "cxr_classifier", "1", tm.classifier_spec())
    return store


@pytest.fixture(scope="module")
def ct_series() -> SeriesInput:
    paths = ct_series_paths()
    return SeriesInput(series_ref_of(paths[0]), "CT", tuple(paths))


def _volume(array: np.ndarray, affine: np.ndarray) -> Volume:
    frames = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}") for i in range(array.shape[0]))
    return Volume(array, affine, "1.2.3", series_ref_of(ct_series_paths()[0]), "CT", frames, ())


def _spec(**fields: Any) -> ModelSpec:
    base = {
        "name": "m",
        "version": "1",
        "format": "onnx",
        "source": "onnx",
        "file": "model.onnx",
        "inputs": [{"name": "x", "shape": [-1, 1, -1, -1, -1]}],
        "outputs": [{"name": "y", "shape": [-1, 2, -1, -1, -1]}],
    }
    return ModelSpec.model_validate(base | fields)


def _expected_threshold(volume: Volume) -> np.ndarray:
    """What the tiny segmenter must label: the 3×3×3 mean of the windowed image above the cut."""
    low, high = tm.HU_WINDOW
    scaled = np.clip((volume.array - low) / (high - low), 0, 1).astype(np.float32)
    with torch.no_grad():
        smooth = tm.SmoothThreshold().conv(torch.from_numpy(scaled)[None, None])[0, 0].numpy()
    return smooth > tm.SCORE_CUT


# --- preprocessing ------------------------------------------------------------------------------------


def test_prepare_reorients_resamples_and_restores_to_the_volume_grid() -> None:
    sagittal = np.array([[0, 0, -1.0, 90], [1.2, 0, 0, -100], [0, -0.9, 0, 120], [0, 0, 0, 1]])  # LPS
    volume = _volume(np.random.default_rng(0).random((10, 20, 30)).astype(np.float32) * 100, sagittal)
    spec = _spec(orientation="RAS", spacing=[2.0, 2.0, 2.0], intensity={"kind": "zscore"})
    prepared = prepare(volume.array, volume.affine, spec)
    # frames run posterior (1.2 mm), rows inferior (0.9 mm), columns to the right (1 mm), so in RAS:
    assert prepared.oriented_shape == (30, 10, 20)  # x ← columns, y ← frames flipped, z ← rows flipped
    assert prepared.image.shape == (round(30 * 1.0 / 2), round(10 * 1.2 / 2), round(20 * 0.9 / 2))
    assert abs(float(prepared.image.mean())) < 0.1 and abs(float(prepared.image.std()) - 1) < 0.1
    restored = restore(np.stack([prepared.image, -prepared.image]), prepared)
    assert restored.shape == (2, 10, 20, 30)
    unchanged = prepare(volume.array, volume.affine, _spec(orientation="RAS"))
    np.testing.assert_array_equal(restore(unchanged.image[None], unchanged)[0], volume.array)


def test_sliding_window_equals_whole_volume_for_a_pointwise_model(tmp_path: Path) -> None:
    path = tm.save_onnx(tm.SmoothThreshold(kernel=1), torch.zeros(1, 1, 4, 4, 4), tmp_path / "p.onnx")
    backend = OnnxRuntimeBackend(path, "p", "1")
    image = np.random.default_rng(1).random((1, 1, 40, 37, 21)).astype(np.float32)
    whole = run_model(backend, image, None)
    windows = run_model(backend, image, (16, 16, 16), sw_batch_size=3, overlap=0.25)
    assert windows.shape == whole.shape == (1, 2, 40, 37, 21)
    np.testing.assert_allclose(windows, whole, atol=1e-5)
    small = run_model(backend, image[:, :, :8, :8, :8], (16, 16, 16))  # padded up to one window
    np.testing.assert_allclose(small, whole[:, :, :8, :8, :8], atol=1e-5)


def test_crop_and_paste_find_the_same_place() -> None:
    array = np.full((12, 30, 40), -1000.0, dtype=np.float32)
    array[3:9, 10:20, 5:25] = 40.0
    volume = _volume(array, np.diag([2.0, 0.5, 0.5, 1.0]))
    box = region_box(volume, -500, margin_mm=1.0)
    assert box == (slice(2, 10), slice(8, 22), slice(3, 27))
    cropped = crop(volume, box)
    assert cropped.array.shape == (8, 14, 24) and cropped.source_frames == volume.source_frames[2:10]
    assert crop_box(cropped, volume) == box


# --- reference pipelines, in process ------------------------------------------------------------------


def test_ct_organ_seg_pipeline(store: ModelStore, ct_series: SeriesInput, tmp_path: Path) -> None:
    values = run_pipeline("ct-organ-seg", ct_series, context(tmp_path, store))
    labelmap: LabelMap = values["organs"]["labelmap"]
    np.testing.assert_array_equal(labelmap.array == 1, _expected_threshold(values["volume"]["volume"]))
    assert 0.01 < float((labelmap.array == 1).mean()) < 0.5
    (path,) = values["seg"]["seg"].paths
    seg = hd.seg.segread(path)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "ct_organs"


def test_pipeline_without_its_model_fails_saying_how_to_add_it(
    ct_series: SeriesInput, tmp_path: Path
) -> None:
    empty = ModelStore(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="'ct_organs' is not in the model store.*radloop models add"):
        run_pipeline("ct-organ-seg", ct_series, context(tmp_path, empty))


def test_multi_model_pipeline_stitches_two_models_into_one_seg(
    store: ModelStore, ct_series: SeriesInput, tmp_path: Path
) -> None:
    values = run_pipeline("ct-multi-model", ct_series, context(tmp_path, store))
    volume: Volume = values["volume"]["volume"]
    body: Volume = values["body"]["volume"]
    full: LabelMap = values["full"]["labelmap"]
    assert body.array.size < volume.array.size
    assert full.array.shape == volume.array.shape and full.reference is volume
    assert [(s.number, s.label) for s in full.segments] == [(1, "Liver"), (2, "Spleen")]
    box = crop_box(body, volume)
    outside = np.ones(volume.array.shape, dtype=bool)
    outside[box] = False
    assert not full.array[outside].any()
    assert (full.array == 1).sum() > 0 and (
        full.array == 2
    ).sum() > 0  # the spleen model fills what liver left
    seg = hd.seg.segread(values["seg"]["seg"].paths[0])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Spleen"]


def test_cxr_classification_pipeline(store: ModelStore, tmp_path: Path) -> None:
    path = pydicom_test_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = SeriesInput(series_ref_of(path), str(ds.Modality), (path,))
    values = run_pipeline("cxr-classification", series, context(tmp_path, store))
    findings: Findings = values["classify"]["findings"]
    assert [f.type.value for f in findings.items] == ["60046008", "8186001", "36118008"]
    image = values["image"]["volume"].array[0]
    assert image.shape == (int(pydicom.dcmread(path).Rows), int(pydicom.dcmread(path).Columns))
    from radloop.inference.preprocess import resize_linear

    scaled = np.clip(resize_linear(image, (64, 64)) / 30000.0, 0, 1)
    with torch.no_grad():
        expected = torch.sigmoid(tm.PooledScores()(torch.from_numpy(scaled)[None, None]))[0].numpy()
    np.testing.assert_allclose([f.probability for f in findings.items], expected, atol=1e-4)
    assert [f.present for f in findings.items] == [bool(p >= 0.5) for p in expected]
    report = pydicom.dcmread(values["report"]["sr"].paths[0])
    assert report.Modality == "SR"
