"""Multi-input models: two series of one study as the two input channels of one network, run by a
study-level pipeline in process (the same model on Triton: ``tests/integration/test_triton.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch

import tiny_models as tm
from helpers_data import series_ref_of
from helpers_study import write_derived_series
from radloop.core.refs import SeriesRef
from radloop.core.settings import InferenceSettings
from radloop.inference.resolve import ModelResolver
from radloop.inference.store import ModelStore
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.operators.channels import InferSegmentChannels, resample_to
from radloop.pipelines.operators.inference import SegmentOptions
from radloop.pipelines.ports import LabelMap, SeriesInput, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.spec import parse_pipeline_text
from radloop.pipelines.steps import run_steps, timed_in_log
from radloop.pipelines.volume import load_volume

PIPELINE = """\
name: two-channel
version: "1"
trigger: study
inputs:
  ct: {modality: [CT], series_description: "(?i)^synthetic"}
  contrast: {modality: [CT], series_description: "(?i)contrast"}
operators:
  - {id: ct-volume, use: dicom.series_to_volume, inputs: {series: input.ct}}
  - {id: contrast-volume, use: dicom.series_to_volume, inputs: {series: input.contrast}}
  - id: contrast-on-ct
    use: volume.resample_to
    inputs: {volume: contrast-volume.volume, reference: ct-volume.volume}
  - id: seg
    use: infer.segment_channels
    with: {model: two_channel}
    inputs: {volume: ct-volume.volume, channel_2: contrast-on-ct.volume}
"""


def two_channel_store(folder: Path) -> ModelStore:
    """A model store holding the tiny 2-input network as ``two_channel``."""
    store = ModelStore(folder / "models")
    onnx = tm.save_onnx(tm.TwoChannelThreshold(), torch.zeros(1, 2, 8, 8, 8), folder / "two.onnx")
    store.add(onnx, "two_channel", "1", tm.segmenter_spec(name="two_channel"))
    return store


def _series(folder: Path) -> SeriesInput:
    paths = tuple(sorted(folder.iterdir()))
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return SeriesInput(series_ref_of(paths[0]), str(ds.Modality), paths, str(ds.SeriesDescription))


def test_two_series_as_two_channels_in_process(synthetic_ct_dir: Path, tmp_path: Path) -> None:
    contrast = write_derived_series(synthetic_ct_dir, tmp_path / "contrast", "Post CONTRAST")
    pipeline = parse_pipeline_text(PIPELINE, Path("two-channel.yaml"), builtin_registry())
    resolver = ModelResolver(InferenceSettings(), two_channel_store(tmp_path))
    ctx = OperatorContext(job_id=1, idempotency_key="two", workdir=tmp_path, models=resolver)

    values = run_steps(
        pipeline, {"ct": _series(synthetic_ct_dir), "contrast": _series(contrast)}, ctx, timed_in_log
    )

    labels: LabelMap = values["seg"]["labelmap"]
    ct: Volume = values["ct-volume"]["volume"]
    assert labels.reference is ct and labels.array.shape == ct.array.shape
    assert 0.001 < float((labels.array == 1).mean()) < 0.9
    other = values["contrast-on-ct"]["volume"]
    np.testing.assert_allclose(other.array, values["contrast-volume"]["volume"].array, atol=1e-3)
    operator = InferSegmentChannels(SegmentOptions(model="two_channel"))
    same_twice = operator.run(ctx, {"volume": ct, "channel_2": ct})["labelmap"]
    assert not np.array_equal(same_twice.array, labels.array)  # the second channel is really used


def test_resample_to_a_shifted_grid(synthetic_ct_dir: Path) -> None:
    paths = sorted(synthetic_ct_dir.iterdir())
    volume = load_volume(paths, series_ref_of(paths[0]))
    shifted_affine = volume.affine.copy()
    shifted_affine[:3, 3] += volume.affine[:3, 0] * 2  # two slices further along the slice axis
    reference = Volume(
        np.zeros_like(volume.array, dtype=np.float32),
        shifted_affine,
        volume.frame_of_reference_uid,
        SeriesRef("1.2.3", "1.2.3.4"),
        "CT",
        volume.source_frames,
        volume.source_paths,
    )
    moved = resample_to(volume, reference)
    np.testing.assert_allclose(moved.array[:-2], volume.array[2:].astype(np.float32), atol=1e-3)
    assert np.all(moved.array[-2:] == volume.array.min())
    assert moved.series == reference.series
