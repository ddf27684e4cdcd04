"""The vectorised deepbet pre-processing gives bit for bit what the straightforward numpy forms
give (which ``test_brain_extraction`` checks against PyTorch and deepbet themselves): the
canonical image as a view, the per-axis resize, the in-place normalisation with its float64
statistics, and thresholding before resizing back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from radloop.core.refs import SeriesRef
from radloop.pipelines.operators.brain_extraction import (
    nearest_exact_indices,
    normalize,
    quantile_like_torch,
    quantiles_like_torch,
    ras_affine,
    resize_nearest_exact,
    standardize,
    to_canonical,
    window,
)
from radloop.pipelines.ports import SourceFrame, Volume

SERIES = SeriesRef("1.2.3", "1.2.3.4")


def _volume(array: np.ndarray, affine: np.ndarray) -> Volume:
    frames = tuple(
        SourceFrame("1.2.840.10008.5.1.4.1.1.4", f"1.2.3.4.{i + 1}") for i in range(array.shape[0])
    )
    return Volume(array, affine, "1.2.3.5", SERIES, "MR", frames, ())


def _plain_resize(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    indices = [nearest_exact_indices(n, m) for n, m in zip(array.shape, shape, strict=True)]
    return np.ascontiguousarray(array[np.ix_(*indices)])


def _plain_normalize(array: np.ndarray, low: np.float32, high: np.float32) -> np.ndarray:
    x = np.clip((array - low) / (high - low), np.float32(0.0), np.float32(1.0))
    mean = np.float32(x.mean(dtype=np.float64))
    std = np.float32(x.std(dtype=np.float64, ddof=1))
    return (np.float32(0.226) * ((x - mean) / std) + np.float32(0.449)).astype(np.float32)


SAGITTAL = np.array([[0.0, 0, -1, 90], [1.0, 0, 0, -126], [0, -1.0, 0, 120], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    "shape", [(128, 128, 128), (256, 256, 256), (97, 130, 255), (64, 64, 64), (31, 77, 100)]
)  # the last two shrink it
def test_resize_and_normalize_are_bit_identical_to_the_plain_forms(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    image = (rng.gamma(2.0, 300.0, size=(70, 90, 110)) * (rng.random((70, 90, 110)) > 0.3)).astype(np.float32)
    canonical, _ = to_canonical(_volume(image, SAGITTAL))  # a strided view, as in a job
    resized = resize_nearest_exact(canonical, shape)
    np.testing.assert_array_equal(resized, _plain_resize(canonical, shape))
    low, high = quantile_like_torch(resized, 0.005), quantile_like_torch(resized, 0.995)
    expected = _plain_normalize(resized, low, high)
    np.testing.assert_array_equal(normalize(resized, low, high), expected)  # a copy: input unchanged
    np.testing.assert_array_equal(normalize(resized, low, high, in_place=True), expected)
    probability = rng.random(shape, dtype=np.float32)
    np.testing.assert_array_equal(
        resize_nearest_exact(probability > 0.5, canonical.shape),
        _plain_resize(probability, canonical.shape) > 0.5,
    )


def test_canonical_image_is_a_view_unless_values_need_cleaning() -> None:
    image = np.random.default_rng(8).random((20, 30, 40)).astype(np.float32)
    volume = _volume(image, SAGITTAL)
    canonical, _ = to_canonical(volume)
    assert np.shares_memory(canonical, volume.array)  # nothing copied
    expected = nib.as_closest_canonical(nib.Nifti1Image(image, ras_affine(volume))).get_fdata(
        dtype=np.float32
    )  # type: ignore[no-untyped-call]
    np.testing.assert_array_equal(canonical, expected)

    dirty = image.copy()
    dirty[3, 4, 5], dirty[6, 7, 8] = np.nan, np.inf
    cleaned, _ = to_canonical(_volume(dirty, SAGITTAL))
    assert not np.shares_memory(cleaned, dirty) and np.isnan(dirty[3, 4, 5])  # the volume is untouched
    reference = nib.as_closest_canonical(nib.Nifti1Image(dirty, ras_affine(volume))).get_fdata(
        dtype=np.float32
    )  # type: ignore[no-untyped-call]
    np.testing.assert_array_equal(cleaned, np.nan_to_num(reference))


@pytest.mark.parametrize("shape", [(256, 256, 256), (97, 130, 255)])
def test_windowing_the_box_before_resizing_is_bit_identical(shape: tuple[int, int, int]) -> None:
    """The mask network's input: window the box, resize, standardise = resize, then normalise."""
    rng = np.random.default_rng(11)
    image = (rng.gamma(2.0, 300.0, size=(70, 90, 110)) * (rng.random((70, 90, 110)) > 0.3)).astype(np.float32)
    canonical, _ = to_canonical(_volume(image, SAGITTAL))
    box = (slice(5, 60), slice(3, 88), slice(20, 101))
    low, high = quantiles_like_torch(canonical, (0.005, 0.995))
    assert (low, high) == (quantile_like_torch(canonical, 0.005), quantile_like_torch(canonical, 0.995))
    expected = normalize(resize_nearest_exact(canonical[box], shape), low, high)
    windowed_first = standardize(resize_nearest_exact(window(canonical[box], low, high), shape))
    np.testing.assert_array_equal(windowed_first, expected)
    np.testing.assert_array_equal(expected, _plain_normalize(_plain_resize(canonical[box], shape), low, high))
