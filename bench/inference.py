"""Inference benchmark: the same models in process and on a local Triton (HTTP and gRPC).

1. **Brain extraction** (deepbet's two real networks, 128³ box then 256³ mask) on the shared
   170-slice T1 series: per-volume latency of the whole operator (pre, both networks, post),
   in process (TorchScript) vs Triton over HTTP vs Triton over gRPC.
2. **Sliding-window CT**: a small 3-D MONAI UNet (random weights, seeded; no real CT model can be
   had here) over the shared 20×512×512 CT with 16×96×96 windows, 4 per call, through the same
   three backends.

Triton is the CPU ``tritonserver`` of the nvidia-pytriton wheel, started here on 127.0.0.1 with a
repository radloop builds (python-backend wrappers), in its own environment
(``~/.cache/radloop/triton-venv``, built on first use). Every mode gets one warm-up run (models
loaded, connections open), then ``--repeat`` timed runs; the table shows the median and the
fastest, and the ratio Triton ÷ in process. Same machine, same cores: the server competes with
nothing else while a mode runs.

Run (with the project venv from scripts/test): .venv/bin/python bench/inference.py [--repeat 2]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from helpers_data import ct_series_paths, series_ref_of  # noqa: E402
from radloop.core.settings import (
    AutoBackendSettings,
    InferenceSettings,
    ModelBackendSettings,
    TritonBackendSettings,
)  # noqa: E402
from radloop.inference.packaged import packaged_models  # noqa: E402
from radloop.inference.resolve import ModelResolver  # noqa: E402
from radloop.inference.store import ModelStore  # noqa: E402
from radloop.inference.triton_local import DEFAULT_VENV, LocalTriton, ensure_venv  # noqa: E402
from radloop.inference.triton_repo import build_repository  # noqa: E402
from radloop.pipelines.operators.brain_extraction import BrainExtraction, BrainExtractionOptions  # noqa: E402
from radloop.pipelines.operators.inference import InferSegment, SegmentOptions  # noqa: E402
from radloop.pipelines.ports import Volume  # noqa: E402
from radloop.pipelines.registry import OperatorContext  # noqa: E402
from radloop.pipelines.volume import load_volume  # noqa: E402

ROI = (16, 96, 96)
SW_BATCH = 4


def ct_unet(folder: Path) -> Path:
    """A seeded 3-D MONAI UNet (1 → 3 channels), as TorchScript."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16, 32), strides=(2, 2, 2))
    path = folder / "unet.ts"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


def build_store(folder: Path) -> ModelStore:
    store = ModelStore(folder / "models")
    for model in packaged_models().values():
        store.add_packaged(model)
    labels = [
        {"value": v, "name": n, "type": {"value": c, "meaning": n}}
        for v, n, c in ((1, "Liver", "10200004"), (2, "Spleen", "78961009"))
    ]
    store.add(
        ct_unet(folder),
        "ct_unet",
        "1",
        {
            "roi_size": list(ROI),
            "sw_batch_size": SW_BATCH,
            "overlap": 0.25,
            "labels": labels,
            "inputs": [{"name": "input__0", "shape": [-1, 1, -1, -1, -1]}],
            "outputs": [{"name": "output__0", "shape": [-1, 3, -1, -1, -1]}],
            "max_batch_size": 8,
            "intensity": {"kind": "scale_range", "a_min": -200, "a_max": 300},
        },
    )
    return store


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    run()  # warm-up: models loaded, connections open
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radloop-bench-") as tmp:
        folder = Path(tmp)
        store = build_store(folder)
        build_repository(store, folder / "repo", "python")
        start = time.monotonic()
        venv = ensure_venv(DEFAULT_VENV)
        print(f"Triton environment {venv}: {time.monotonic() - start:.0f} s")
        t1_paths = peers.gunzip_series(
            peers.shared_data_dir() / "mr-brain-t1-philips" / "series", folder / "t1"
        )
        t1 = load_volume(t1_paths, series_ref_of(t1_paths[0]))
        ct = load_volume(ct_series_paths(), series_ref_of(ct_series_paths()[0]))
        start = time.monotonic()
        with LocalTriton(folder / "repo", venv, folder / "server") as server:
            ready = time.monotonic() - start
            print(f"tritonserver ready in {ready:.1f} s (HTTP {server.http_url}, gRPC {server.grpc_url})")
            modes = {"in process": None, "Triton HTTP": server.http_url, "Triton gRPC": server.grpc_url}
            results = {}
            for mode, url in modes.items():
                resolver = _resolver(store, url)
                results[("brain", mode)] = timed(lambda r=resolver: _brain(t1, r, folder), args.repeat)
                results[("ct", mode)] = timed(lambda r=resolver: _ct(ct, r, folder), args.repeat)
    _report(results, t1, ct)


def _resolver(store: ModelStore, url: str | None) -> ModelResolver:
    default: ModelBackendSettings = TritonBackendSettings(url=url) if url else AutoBackendSettings()
    return ModelResolver(InferenceSettings(default=default), store)


def _ctx(resolver: ModelResolver, folder: Path) -> OperatorContext:
    return OperatorContext(job_id=0, idempotency_key="bench", workdir=folder / "work", models=resolver)


def _brain(volume: Volume, resolver: ModelResolver, folder: Path) -> object:
    return BrainExtraction(BrainExtractionOptions()).run(_ctx(resolver, folder), {"volume": volume})


def _ct(volume: Volume, resolver: ModelResolver, folder: Path) -> object:
    return InferSegment(SegmentOptions(model="ct_unet")).run(_ctx(resolver, folder), {"volume": volume})


def _report(results: dict[tuple[str, str], list[float]], t1: Volume, ct: Volume) -> None:
    titles = {
        "brain": f"brain extraction, T1 {'×'.join(map(str, t1.array.shape))}",
        "ct": f"sliding window, CT {'×'.join(map(str, ct.array.shape))}",
    }
    print(f"\nbrain: deepbet 128³ + 256³ networks; CT: MONAI UNet, windows {ROI}, {SW_BATCH} per call")
    print(f"{'workload':<36} {'mode':<12} {'median s':>9} {'min s':>7} {'÷ in process':>13}")
    for workload, title in titles.items():
        base = statistics.median(results[(workload, "in process")])
        for mode in ("in process", "Triton HTTP", "Triton gRPC"):
            times = results[(workload, mode)]
            median = statistics.median(times)
            print(f"{title:<36} {mode:<12} {median:>9.2f} {min(times):>7.2f} {median / base:>13.2f}")


if __name__ == "__main__":
    main()
