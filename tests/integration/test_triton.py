"""Inference on a real Triton Inference Server: the CPU ``tritonserver`` of the nvidia-pytriton
wheel, in its own virtual environment, started once for the session on 127.0.0.1.

The repository is built by radloop from a model store holding deepbet's two networks, a MONAI
bundle and an ONNX model (tiny networks built by the tests, see `tests/tiny_models.py`). The
same pipelines run in process and through Triton over HTTP and gRPC, and must agree. Failure
paths use a server that is down (nothing listens), a model the server does not have, and a
scripted peer that accepts TCP connections but never answers (what no real server does on
purpose), to show that every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlmodel import Session, col, select

import peers
import tiny_models as tm
from helpers_data import series_ref_of
from helpers_study import write_derived_series
from radloop.core.errors import InferenceError
from radloop.core.models import Job, JobState, JobStep
from radloop.core.settings import (
    AutoBackendSettings,
    InferenceSettings,
    ModelBackendSettings,
    TritonBackendSettings,
)
from radloop.inference.packaged import packaged_models
from radloop.inference.resolve import ModelResolver
from radloop.inference.store import ModelStore
from radloop.inference.triton import TritonBackend
from radloop.inference.triton_local import DEFAULT_VENV, LocalTriton, LocalTritonError, ensure_venv
from radloop.inference.triton_repo import build_repository
from radloop.pipelines.operators.brain_extraction import BrainExtraction, BrainExtractionOptions
from radloop.pipelines.operators.channels import InferSegmentChannels, resample_to
from radloop.pipelines.operators.inference import InferSegment, SegmentOptions
from radloop.pipelines.ports import LabelMap, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.volume import load_volume
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.slow]


@dataclass
class TritonSetup:
    server: LocalTriton
    store: ModelStore

    def resolver(self, url: str | None, **settings: Any) -> ModelResolver:
        """All models on the server at ``url`` (None: all in process)."""
        default: ModelBackendSettings = (
            TritonBackendSettings(url=url, **settings) if url else AutoBackendSettings()
        )
        return ModelResolver(InferenceSettings(default=default), self.store)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonSetup]:
    """The store (deepbet, a MONAI bundle, an ONNX model), its repository, and one running server."""
    folder = tmp_path_factory.mktemp("triton")
    store = ModelStore(folder / "models")
    for model in packaged_models().values():
        store.add_packaged(model)
    store.add(tm.make_bundle(folder / "bundle"), "ct_spleen", "0.1.0")
    onnx = tm.save_onnx(tm.SmoothThreshold(), torch.zeros(1, 1, 8, 8, 8), folder / "seg.onnx")
    store.add(onnx, "ct_organs", "1", tm.segmenter_spec())
    two = tm.save_onnx(tm.TwoChannelThreshold(), torch.zeros(1, 2, 8, 8, 8), folder / "two.onnx")
    store.add(two, "two_channel", "1", tm.segmenter_spec(name="two_channel"))  # a 2-input network
    build_repository(store, folder / "repo", "python")
    venv = Path(os.environ.get("RADLOOP_TRITON_VENV", DEFAULT_VENV))
    try:
        start = time.monotonic()
        ensure_venv(venv)
        print(f"\nTriton environment {venv} ready in {time.monotonic() - start:.0f} s")
        server = LocalTriton(folder / "repo", venv, folder / "server").start(ready_timeout_s=300)
    except LocalTritonError as e:
        pytest.fail(f"the local Triton server could not be set up: {e}", pytrace=False)
    try:
        yield TritonSetup(server, store)
    finally:
        server.stop()


def _ctx(tmp_path: Path, resolver: ModelResolver) -> OperatorContext:
    return OperatorContext(job_id=1, idempotency_key="triton", workdir=tmp_path, models=resolver)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _brain(volume: Volume, ctx: OperatorContext) -> LabelMap:
    result = BrainExtraction(BrainExtractionOptions()).run(ctx, {"volume": volume})["labelmap"]
    assert isinstance(result, LabelMap)
    return result


# --- agreement ---------------------------------------------------------------------------------------


def test_brain_extraction_on_triton_matches_in_process(
    triton: TritonSetup, t1_volume: Volume, tmp_path: Path
) -> None:
    reference = _brain(t1_volume, _ctx(tmp_path, triton.resolver(None)))
    for url in (triton.server.http_url, triton.server.grpc_url):
        start = time.perf_counter()
        mask = _brain(t1_volume, _ctx(tmp_path, triton.resolver(url)))
        dice = _dice(mask.array, reference.array)
        took = time.perf_counter() - start
        print(f"\nbrain mask via {url}: Dice {dice:.6f} against in process ({took:.1f} s)")
        assert dice >= 0.999, (url, dice)


def test_monai_bundle_and_onnx_model_on_triton_match_in_process(
    triton: TritonSetup, ct_volume: Volume, tmp_path: Path
) -> None:
    for model in ("ct_spleen", "ct_organs"):  # a MONAI bundle (TorchScript, sliding window), an ONNX model
        operator = InferSegment(SegmentOptions(model=model))
        local = operator.run(_ctx(tmp_path, triton.resolver(None)), {"volume": ct_volume})["labelmap"]
        assert 0.01 < float((local.array > 0).mean()) < 0.5
        for url in (triton.server.http_url, triton.server.grpc_url):
            remote = operator.run(_ctx(tmp_path, triton.resolver(url)), {"volume": ct_volume})["labelmap"]
            dice = _dice(remote.array, local.array)
            print(f"\n{model} via {url}: Dice {dice:.6f} against in process")
            assert dice >= 0.999, (model, url, dice)


def test_two_input_network_on_triton_gives_the_in_process_labels(
    triton: TritonSetup, synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    """Two series of one study as the two channels of one network: identical labels on Triton."""
    contrast_dir = write_derived_series(synthetic_ct_dir, tmp_path / "contrast", "Post CONTRAST")
    ct, contrast = (
        load_volume(sorted(d.iterdir()), series_ref_of(sorted(d.iterdir())[0]))
        for d in (synthetic_ct_dir, contrast_dir)
    )
    channels = {"volume": ct, "channel_2": resample_to(contrast, ct)}
    operator = InferSegmentChannels(SegmentOptions(model="two_channel"))
    local = operator.run(_ctx(tmp_path, triton.resolver(None)), channels)["labelmap"]
    assert 0.001 < float((local.array == 1).mean()) < 0.9
    for url in (triton.server.http_url, triton.server.grpc_url):
        remote = operator.run(_ctx(tmp_path, triton.resolver(url)), channels)["labelmap"]
        assert np.array_equal(remote.array, local.array), url


def test_metadata_comes_from_the_server(triton: TritonSetup) -> None:
    for url in (triton.server.http_url, triton.server.grpc_url):
        backend = TritonBackend("deepbet_mask", TritonBackendSettings(url=url))
        assert backend.max_batch_size == 2
        assert [(t.name, t.dtype, t.shape) for t in backend.metadata.inputs] == [
            ("input__0", "float32", (-1, 1, 256, 256, 256))
        ]


# --- failures are bounded and named ------------------------------------------------------------------


def test_missing_model_names_url_and_model(triton: TritonSetup) -> None:
    for url in (triton.server.http_url, triton.server.grpc_url):
        start = time.monotonic()
        with pytest.raises(InferenceError, match=f"Triton {url} model 'no_such_model'") as raised:
            TritonBackend("no_such_model", TritonBackendSettings(url=url))
        assert time.monotonic() - start < 5
        assert raised.value.transient and raised.value.__cause__ is not None


def test_down_and_unresponsive_servers_fail_within_their_timeouts() -> None:
    down = peers.free_port()
    with socket.socket() as silent:  # accepts connections (backlog), never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = silent.getsockname()[1]
        cases = [
            (f"http://127.0.0.1:{down}", "after 3 tries"),
            (f"grpc://127.0.0.1:{down}", "UNAVAILABLE"),
            (f"http://127.0.0.1:{hung}", "timed out"),
            (f"grpc://127.0.0.1:{hung}", "DEADLINE_EXCEEDED"),
        ]
        for url, why in cases:
            settings = TritonBackendSettings(
                url=url, timeout_s=2, connect_timeout_s=1, retries=2, retry_backoff_s=0.2
            )
            start = time.monotonic()
            with pytest.raises(InferenceError, match=why) as raised:
                TritonBackend("deepbet_mask", settings)
            elapsed = time.monotonic() - start
            assert f"Triton {url} model 'deepbet_mask'" in str(raised.value)
            assert elapsed < 10, (url, elapsed)


@pytest.mark.peers
def test_job_with_triton_down_retries_with_backoff_then_fails(tmp_path: Path) -> None:
    url = f"grpc://127.0.0.1:{peers.free_port()}"
    config = {
        "dicom": {
            "listeners": [
                {"ae_title": "RADLOOP_BRAIN", "pipelines": ["brain-extraction"], "quiet_period_s": 60}
            ]
        },
        "workers": {"max_attempts": 3, "retry_base_s": 1.0},
        "inference": {
            "default": {
                "backend": "triton",
                "url": url,
                "retries": 1,
                "retry_backoff_s": 0.1,
                "connect_timeout_s": 1,
                "timeout_s": 5,
            }
        },
    }
    series = peers.gunzip_series(peers.shared_data_dir() / "mr-brain-t1-philips" / "series", tmp_path / "t1")
    (tmp_path / "server").mkdir()
    with RadloopServer(tmp_path / "server", config) as server:
        sent = peers.storescu(series, "127.0.0.1", server.port, "RADLOOP_BRAIN")
        assert sent.returncode == 0, sent.stderr

        def failed_job() -> Job | None:
            with Session(server.engine) as s:
                return s.exec(select(Job).where(Job.state == JobState.failed)).first()

        job = peers.wait_for(failed_job, 180, interval=0.5, what=f"failed job (log: {server.log_path})")
        with Session(server.engine) as s:
            steps = s.exec(
                select(JobStep).where(JobStep.operator_id == "brain").order_by(col(JobStep.id))
            ).all()
    assert job.attempts == 3
    assert f"Triton {url} model 'deepbet_bbox'" in job.error and "UNAVAILABLE" in job.error
    assert [st.attempt for st in steps] == [1, 2, 3] and all(st.state == "failed" for st in steps)
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # backoff 1 s, then 2 s
    print(f"\njob failed after {job.attempts} attempts, {gaps} s apart: {job.error}")


def test_wrapper_reads_what_build_repo_wrote(triton: TritonSetup) -> None:
    """The running server loaded every model of the repository radloop wrote."""
    names = sorted(p.name for p in triton.server.repo.iterdir())
    for name in names:
        backend = TritonBackend(name, TritonBackendSettings(url=triton.server.grpc_url))
        assert backend.metadata.name == name
