"""Brain extraction with deepbet's real networks, against deepbet's own implementation.

The numeric helpers are checked against the PyTorch/deepbet functions they reproduce; the
slow tests run the whole operator on a real 3T MPRAGE series (``../shared/data``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from radloop.core.errors import InferenceError, InputDataError
from radloop.core.refs import SeriesRef
from radloop.inference.backend import InferenceBackend, ModelMetadata, TensorSpec
from radloop.inference.torchscript import TorchScriptBackend
from radloop.pipelines.operators.brain_extraction import (
    BRAIN_SEGMENT,
    BrainExtraction,
    BrainExtractionOptions,
    bbox_with_margin,
    deepbet_model_path,
    from_canonical,
    nearest_exact_indices,
    normalize,
    quantile_like_torch,
    ras_affine,
    to_canonical,
)
from radloop.pipelines.ports import LabelMap, SourceFrame, Volume
from radloop.pipelines.registry import OperatorContext

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T1_SERIES = SHARED_DATA / "mr-brain-t1-philips" / "series"
SERIES = SeriesRef("1.2.3", "1.2.3.4")


def synthetic_volume(array: np.ndarray, affine: np.ndarray) -> Volume:
    """A Volume around ``array`` (for geometry tests that need no DICOM files)."""
    frames = tuple(
        SourceFrame("1.2.840.10008.5.1.4.1.1.4", f"1.2.3.4.{i + 1}") for i in range(array.shape[0])
    )
    return Volume(array, affine, "1.2.3.5", SERIES, "MR", frames, ())


# --- helpers reproduce PyTorch / deepbet exactly -------------------------------------------------


def _torch_nearest_exact(in_size: int, out_size: int) -> list[int]:
    source = torch.arange(in_size, dtype=torch.float32)[None, None, :, None, None]
    resized = F.interpolate(source, (out_size, 1, 1), mode="nearest-exact")[0, 0, :, 0, 0]
    return resized.long().tolist()


def test_nearest_exact_indices_match_torch() -> None:
    """Every resize deepbet does: any size to 128 or 256 and back from 256 into the box."""
    for size in range(1, 600):
        for small, large in ((size, 128), (size, 256), (256, size)):
            assert nearest_exact_indices(small, large).tolist() == _torch_nearest_exact(small, large)


def test_quantile_matches_torch() -> None:
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 300.0, size=(64, 64, 64)) * (rng.random((64, 64, 64)) > 0.4)).astype(np.float32)
    for q in (0.005, 0.5, 0.995):
        assert quantile_like_torch(image, q) == torch.from_numpy(image).quantile(q).item()


def test_normalize_matches_deepbet() -> None:
    from deepbet.utils import normalize as deepbet_normalize

    image = np.random.default_rng(1).normal(500, 200, size=(40, 50, 60)).astype(np.float32)
    low, high = quantile_like_torch(image, 0.005), quantile_like_torch(image, 0.995)
    expected = deepbet_normalize(torch.from_numpy(image), torch.tensor(low), torch.tensor(high)).numpy()
    np.testing.assert_allclose(normalize(image, low, high), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(170, 256, 256), (256, 256, 256), (60, 512, 400)])
def test_bbox_matches_deepbet(shape: tuple[int, int, int]) -> None:
    from deepbet.bet import BrainExtraction as DeepbetExtraction

    rng = np.random.default_rng(2)
    for _ in range(20):
        lo = rng.integers(0, 60, size=3)
        hi = lo + rng.integers(20, 68, size=3)  # > 2 % of a 128² plane
        small = np.zeros((128, 128, 128), dtype=bool)
        small[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        expected = DeepbetExtraction.get_bbox_with_margin(
            DeepbetExtraction, torch.from_numpy(small.astype(np.float32)), shape, 0.1
        )
        assert bbox_with_margin(small, shape, 0.1) == expected


def test_canonical_round_trip_for_axial_sagittal_and_oblique() -> None:
    rng = np.random.default_rng(3)
    axial = np.diag([3.0, 0.7, 0.8, 1.0])[[2, 1, 0, 3]]  # frames along S, rows along P, columns along L
    axial[:3, :3] = axial[:3, :3].T
    sagittal = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -120], [0, -1, 0, 140], [0, 0, 0, 1]])
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    oblique = sagittal.copy()
    oblique[:3, :3] = rotation @ sagittal[:3, :3]
    for affine in (axial, sagittal, oblique):
        volume = synthetic_volume(rng.random((7, 9, 11)).astype(np.float32), affine)
        canonical, ornt = to_canonical(volume)
        image = nib.Nifti1Image(volume.array, ras_affine(volume))  # type: ignore[no-untyped-call]
        expected = nib.as_closest_canonical(image)  # type: ignore[no-untyped-call]
        np.testing.assert_array_equal(canonical, expected.get_fdata(dtype=np.float32))
        mask = canonical > 0.5
        np.testing.assert_array_equal(from_canonical(mask, ornt), volume.array > 0.5)


# --- options and model files --------------------------------------------------------------------


def test_options_forbid_unknown_keys_and_default_to_deepbet() -> None:
    options = BrainExtractionOptions()
    assert (options.threshold, options.n_dilate, options.model_path) == (0.5, 0, None)
    with pytest.raises(ValidationError):
        BrainExtractionOptions.model_validate({"treshold": 0.4})
    with pytest.raises(ValidationError):
        BrainExtractionOptions(threshold=1.5)


def test_deepbet_models_are_found_in_the_installed_wheel() -> None:
    for name in ("model.pt", "bbox_model.pt"):
        path = deepbet_model_path(name)
        assert path.name == name and path.is_file()


# --- TorchScript backend --------------------------------------------------------------------------


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.stack([x, 2 * x], dim=1)[:, :, 0], dim=1)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Scale()), str(path))
    return path


def test_torchscript_backend_runs_with_triton_names(tiny_model: Path) -> None:
    backend = TorchScriptBackend(tiny_model, name="tiny", version="1")
    assert isinstance(backend, InferenceBackend)
    assert [s.name for s in backend.metadata.inputs] == ["input__0"]
    assert [s.name for s in backend.metadata.outputs] == ["output__0"]
    x = np.zeros((1, 1, 2, 3, 4), dtype=np.float32)
    out = backend.infer({"input__0": x})["output__0"]
    assert out.shape == (1, 2, 2, 3, 4) and np.allclose(out, 0.5)


def test_torchscript_backend_checks_inputs_against_its_spec(tiny_model: Path) -> None:
    spec = (TensorSpec("input__0", "float32", (-1, 1, 2, 3, 4)),)
    backend = TorchScriptBackend(tiny_model, name="tiny", version="1", inputs=spec)
    with pytest.raises(InferenceError, match="inputs"):
        backend.infer({"image": np.zeros((1, 1, 2, 3, 4), dtype=np.float32)})
    with pytest.raises(InferenceError, match="shape"):
        backend.infer({"input__0": np.zeros((1, 1, 2, 3, 5), dtype=np.float32)})
    with pytest.raises(InferenceError, match="float32"):
        backend.infer({"input__0": np.zeros((1, 1, 2, 3, 4), dtype=np.float64)})


def test_torchscript_backend_errors_name_the_model_path(tiny_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(InferenceError, match="missing.pt") as raised:
        TorchScriptBackend(missing, name="missing", version="1")
    assert raised.value.__cause__ is not None
    backend = TorchScriptBackend(tiny_model, name="tiny", version="1")
    with pytest.raises(InferenceError, match="tiny.pt") as raised:
        backend.infer({"input__0": np.zeros((2,), dtype=np.float32)})  # stack(...)[:, :, 0] fails
    assert raised.value.__cause__ is not None


def test_tensor_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="dtype"):
        TensorSpec("x", "floaty", (1,))
    with pytest.raises(ValueError, match="shape"):
        TensorSpec("x", "float32", (0, 3))
    spec = TensorSpec("x", "float32", (-1, 3))
    with pytest.raises(ValueError, match="unique"):
        ModelMetadata("m", "1", (spec, spec), ())


class _NoBrain:
    """A backend whose network sees no brain anywhere (what a real model does on a blank image)."""

    metadata = ModelMetadata(
        "blank",
        "1",
        (TensorSpec("input__0", "float32", (-1,)),),
        (TensorSpec("output__0", "float32", (-1,)),),
    )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["input__0"]
        return {"output__0": np.zeros((x.shape[0], 2, *x.shape[2:]), dtype=np.float32)}


def test_no_brain_is_an_input_error(tmp_path: Path) -> None:
    volume = synthetic_volume(
        np.random.default_rng(4).random((20, 30, 40)).astype(np.float32), np.diag([1.0, 1, 1, 1])
    )
    operator = BrainExtraction(BrainExtractionOptions(), bbox_backend=_NoBrain(), mask_backend=_NoBrain())
    ctx = OperatorContext(job_id=1, idempotency_key="k", workdir=tmp_path)
    with pytest.raises(InputDataError, match="no brain"):
        operator.run(ctx, {"volume": volume})


# --- real data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t1_labelmap(t1_volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> LabelMap:
    """The operator's result on the T1 series (models loaded from the deepbet wheel)."""
    operator = BrainExtraction(BrainExtractionOptions())
    ctx = OperatorContext(job_id=1, idempotency_key="t1", workdir=tmp_path_factory.mktemp("work"))
    start = time.perf_counter()
    result = operator.run(ctx, {"volume": t1_volume})["labelmap"]
    logging.getLogger(__name__).info("brain extraction took %.1f s", time.perf_counter() - start)
    assert isinstance(result, LabelMap)
    return result


@pytest.mark.slow
def test_brain_volume_is_plausible(t1_labelmap: LabelMap) -> None:
    assert t1_labelmap.array.dtype == np.uint8
    assert set(np.unique(t1_labelmap.array).tolist()) == {0, 1}
    assert t1_labelmap.segments == (BRAIN_SEGMENT,)
    assert (t1_labelmap.algorithm.name, t1_labelmap.algorithm.version) == ("deepbet", "1.0.2")
    volume_ml = float(t1_labelmap.array.sum()) * t1_labelmap.reference.voxel_volume_ml
    assert 1000 <= volume_ml <= 1800, volume_ml


@pytest.mark.slow
def test_agrees_with_deepbet_itself(t1_volume: Volume, t1_labelmap: LabelMap, tmp_path: Path) -> None:
    from deepbet.bet import BrainExtraction as DeepbetExtraction

    nifti = tmp_path / "t1.nii.gz"
    image = nib.Nifti1Image(t1_volume.array, ras_affine(t1_volume))  # type: ignore[no-untyped-call]
    image.to_filename(nifti)
    _, mask_image, _ = DeepbetExtraction(no_gpu=True).run(str(nifti))
    # deepbet returns the mask in the input file's orientation: the volume's own grid.
    np.testing.assert_allclose(mask_image.affine, ras_affine(t1_volume), atol=1e-4)
    reference = np.asarray(mask_image.dataobj).astype(bool)
    ours = t1_labelmap.array.astype(bool)
    dice = 2 * np.logical_and(ours, reference).sum() / (ours.sum() + reference.sum())
    logging.getLogger(__name__).info("Dice against deepbet: %.6f", dice)
    assert dice >= 0.999, dice
