"""The model store, model specs, imports (ONNX, TorchScript, MONAI bundle, deepbet), the resolver,
Triton repository generation, and the ``radloop models`` commands.

The CT and CXR networks are tiny ones the tests build (`tests/tiny_models.py`): no real model of
that kind can be had here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

import tiny_models as tm
from radloop.cli import app
from radloop.core.errors import ConfigError, ModelNotFoundError, PermanentJobError
from radloop.core.settings import (
    InferenceSettings,
    TorchScriptBackendSettings,
    TritonBackendSettings,
    load_settings,
)
from radloop.inference.model_spec import ModelSpec
from radloop.inference.onnx_runtime import OnnxRuntimeBackend
from radloop.inference.packaged import DEEPBET_BBOX, DEEPBET_MASK, packaged_models
from radloop.inference.resolve import ModelResolver
from radloop.inference.store import ModelStore, version_key
from radloop.inference.torchscript import TorchScriptBackend
from radloop.inference.triton_repo import build_repository, config_pbtxt


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny networks as files: ONNX and TorchScript segmenters, an ONNX classifier, a bundle."""
    folder = tmp_path_factory.mktemp("sources")
    return {
        "seg_onnx": tm.save_onnx(tm.SmoothThreshold(), torch.zeros(1, 1, 8, 8, 8), folder / "seg.onnx"),
        "seg_ts": tm.save_torchscript(tm.SmoothThreshold(), folder / "seg.ts"),
        "cls_onnx": tm.save_onnx(
            tm.PooledScores(), torch.zeros(1, 1, 64, 64), folder / "cls.onnx", dynamic_spatial=False
        ),
        "bundle": tm.make_bundle(folder / "spleen_bundle"),
    }


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


# --- specs ------------------------------------------------------------------------------------------


def _spec(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "m",
        "version": "1",
        "format": "onnx",
        "source": "onnx",
        "file": "model.onnx",
        "inputs": [{"name": "x", "shape": [-1, 1, -1, -1, -1]}],
        "outputs": [{"name": "y", "shape": [-1, 2, -1, -1, -1]}],
    }
    return base | changes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad name"}, "model name"),
        ({"orientation": "RAX"}, "orientation"),
        ({"orientation": "RRS"}, "orientation"),
        ({"spacing": [1.0, 1.0]}, "spacing has 2 values"),
        ({"labels": [{"value": 0, "name": "x", "type": {"value": "1", "meaning": "x"}}]}, "start at 1"),
        ({"intensity": {"kind": "scale_range", "a_min": 5, "a_max": 1}}, "a_min < a_max"),
        ({"inputs": [{"name": "x", "dtype": "floaty", "shape": [-1]}]}, "dtype"),
    ],
)
def test_invalid_specs_say_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate(_spec(**changes))


def test_versions_sort_naturally() -> None:
    assert sorted(["1.10", "1.9", "2", "1.9.1"], key=version_key) == ["1.9", "1.9.1", "1.10", "2"]


def test_triton_backend_settings_need_a_url() -> None:
    with pytest.raises(ValidationError, match="scheme://host:port"):
        TritonBackendSettings(url="127.0.0.1:8001")
    settings = load_settings(
        None, inference={"models": {"m": {"backend": "triton", "url": "grpc://127.0.0.1:1"}}}
    )
    assert settings.inference.backend_for("m").url == "grpc://127.0.0.1:1"
    assert settings.inference.backend_for("other").backend == "auto"


# --- importing ---------------------------------------------------------------------------------------


def test_onnx_import_reads_tensors_from_the_graph(store: ModelStore, sources: dict[str, Path]) -> None:
    stored = store.add(sources["seg_onnx"], "ct_organs", "1", tm.segmenter_spec())
    spec = stored.spec
    assert (spec.format, spec.source, stored.path.name) == ("onnx", "onnx", "model.onnx")
    assert [(t.name, t.shape) for t in spec.inputs] == [("image", [-1, 1, -1, -1, -1])]
    assert [(t.name, t.shape) for t in spec.outputs] == [("logits", [-1, 2, -1, -1, -1])]
    assert spec.labels[0].type.value == "78961009"
    assert len(spec.sha256) == 64
    assert store.get("ct_organs").spec == spec  # read back from model.json


def test_torchscript_import_uses_triton_names_and_spec_shapes(
    store: ModelStore, sources: dict[str, Path]
) -> None:
    stored = store.add(
        sources["seg_ts"], "seg", "1", {"inputs": [{"name": "input__0", "shape": [-1, 1, 16, 16, 16]}]}
    )
    assert stored.spec.format == "torchscript" and stored.path.name == "model.ts"
    assert stored.spec.inputs[0].shape == [-1, 1, 16, 16, 16]
    assert stored.spec.outputs[0].name == "output__0"


def test_monai_bundle_import_reads_metadata_and_inference_config(
    store: ModelStore, sources: dict[str, Path]
) -> None:
    spec = store.add(sources["bundle"], "ct_spleen", "0.1.0").spec
    assert (spec.source, spec.format) == ("monai_bundle", "torchscript")
    assert spec.orientation == "RAS" and spec.spacing == [1.5, 1.5, 2.0]
    assert (spec.intensity.kind, spec.intensity.a_min, spec.intensity.a_max) == ("scale_range", -57.0, 164.0)
    assert (spec.roi_size, spec.sw_batch_size, spec.overlap) == ([32, 32, 32], 4, 0.5)
    assert spec.inputs[0].shape == [-1, 1, -1, -1, -1] and spec.outputs[0].shape == [-1, 2, -1, -1, -1]
    assert [(lab.value, lab.name, lab.type.value) for lab in spec.labels] == [(1, "spleen", "78961009")]
    assert (store.root / "ct_spleen" / "0.1.0" / "bundle" / "configs" / "metadata.json").is_file()


def test_bundle_without_torchscript_is_refused(tmp_path: Path, store: ModelStore) -> None:
    bundle = tm.make_bundle(tmp_path / "b")
    (bundle / "models" / "model.ts").unlink()
    torch.save(
        tm.SmoothThreshold().state_dict(), bundle / "models" / "model.pt"
    )  # a state dict, not TorchScript
    with pytest.raises(ConfigError, match="ckpt_export"):
        store.add(bundle, "x", "1")


def test_versions_are_immutable_and_listed_in_order(store: ModelStore, sources: dict[str, Path]) -> None:
    for version in ("1.10", "1.9"):
        store.add(sources["seg_onnx"], "ct_organs", version, tm.segmenter_spec())
    with pytest.raises(ConfigError, match="immutable"):
        store.add(sources["seg_onnx"], "ct_organs", "1.9")
    store.add(
        sources["seg_onnx"],
        "ct_organs",
        "1.9",
        tm.segmenter_spec(label="Liver", code="10200004"),
        replace=True,
    )
    assert store.versions("ct_organs") == ["1.9", "1.10"]
    assert store.get("ct_organs").spec.version == "1.10"
    assert store.get("ct_organs", "1.9").spec.labels[0].name == "Liver"
    assert not any(p.name.startswith(".tmp") for p in (store.root / "ct_organs").iterdir())


def test_missing_model_names_the_store_and_the_command(store: ModelStore) -> None:
    with pytest.raises(
        ModelNotFoundError,
        match=r"'ct_organs' is not in the model store at .*radloop models add PATH "
        r"--name ct_organs",
    ):
        store.get("ct_organs")
    assert store.find("ct_organs") is None


def test_deepbet_imports_into_the_store(store: ModelStore) -> None:
    packaged = packaged_models()
    assert set(packaged) == {DEEPBET_BBOX, DEEPBET_MASK}
    assert store.find(DEEPBET_MASK) is not None  # served from the wheel before import
    for model in packaged.values():
        store.add_packaged(model)
    mask = store.get(DEEPBET_MASK)
    assert (
        mask.spec.version == "1.0.2"
        and mask.path.stat().st_size == packaged[DEEPBET_MASK].path.stat().st_size
    )
    assert mask.spec.inputs[0].shape == [-1, 1, 256, 256, 256]
    assert mask.spec.labels[0].type.value == "12738006"


# --- resolving and running in process ----------------------------------------------------------------


def test_resolver_runs_onnx_and_torchscript_in_process_alike(
    store: ModelStore, sources: dict[str, Path]
) -> None:
    store.add(sources["seg_onnx"], "seg_onnx", "1", tm.segmenter_spec())
    store.add(sources["seg_ts"], "seg_ts", "1", tm.segmenter_spec())
    resolver = ModelResolver(InferenceSettings(), store)
    onnx, script = resolver.resolve("seg_onnx"), resolver.resolve("seg_ts")
    assert isinstance(onnx.backend, OnnxRuntimeBackend) and isinstance(script.backend, TorchScriptBackend)
    assert resolver.resolve("seg_onnx") is onnx  # built once
    x = np.random.default_rng(0).random((2, 1, 9, 10, 11)).astype(np.float32)
    a = onnx.backend.infer({"image": x})["logits"]
    b = script.backend.infer({"input__0": x})["output__0"]
    assert a.shape == (2, 2, 9, 10, 11)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_resolver_refuses_a_backend_that_cannot_run_the_file(
    store: ModelStore, sources: dict[str, Path]
) -> None:
    store.add(sources["seg_onnx"], "m", "1", tm.segmenter_spec())
    resolver = ModelResolver(InferenceSettings(models={"m": TorchScriptBackendSettings()}), store)
    with pytest.raises(PermanentJobError, match="onnx file; backend 'torchscript' cannot run it"):
        resolver.resolve("m")
    with pytest.raises(ModelNotFoundError, match="radloop models add"):
        resolver.resolve("nowhere")


# --- Triton repositories ---------------------------------------------------------------------------


def test_build_repo_python_flavour(store: ModelStore, sources: dict[str, Path], tmp_path: Path) -> None:
    store.add(sources["seg_onnx"], "ct_organs", "1", tm.segmenter_spec())
    store.add(sources["seg_onnx"], "ct_organs", "2", tm.segmenter_spec())
    store.add(sources["bundle"], "ct_spleen", "0.1.0")
    repo = tmp_path / "repo"
    names = build_repository(store, repo, "python")
    assert names == ["ct_organs", "ct_spleen", DEEPBET_BBOX, DEEPBET_MASK]
    config = (repo / "ct_organs" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 4" in config
    assert '{ name: "image", data_type: TYPE_FP32, dims: [ 1, -1, -1, -1 ] }' in config
    assert "dynamic_batching { max_queue_delay_microseconds: 2000 }" in config
    assert sorted(p.name for p in (repo / "ct_organs").iterdir()) == ["1", "2", "config.pbtxt"]
    assert {p.name for p in (repo / "ct_organs" / "2").iterdir()} == {
        "model.py",
        "model.onnx",
        "radloop_model.json",
    }
    wrapper = json.loads((repo / "ct_spleen" / "1" / "radloop_model.json").read_text())
    assert wrapper | {"inputs": ["input__0"]} == {
        "name": "ct_spleen",
        "version": "0.1.0",
        "format": "torchscript",
        "file": "model.ts",
        "inputs": ["input__0"],
        "outputs": ["output__0"],
    }
    with pytest.raises(ConfigError, match="not empty"):
        build_repository(store, repo, "python")


def test_build_repo_native_flavour(store: ModelStore, sources: dict[str, Path], tmp_path: Path) -> None:
    store.add(sources["seg_onnx"], "ct_organs", "1", tm.segmenter_spec())
    store.add(sources["bundle"], "ct_spleen", "0.1.0")
    build_repository(store, tmp_path / "repo", "native", include_packaged=False)
    assert 'platform: "onnxruntime_onnx"' in (tmp_path / "repo" / "ct_organs" / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in (tmp_path / "repo" / "ct_spleen" / "config.pbtxt").read_text()
    assert (tmp_path / "repo" / "ct_organs" / "1" / "model.onnx").is_file()
    assert (tmp_path / "repo" / "ct_spleen" / "1" / "model.pt").is_file()


def test_fixed_batch_models_get_no_batching() -> None:
    spec = ModelSpec.model_validate(_spec(inputs=[{"name": "x", "shape": [1, 1, 8, 8, 8]}]))
    config = config_pbtxt(spec, "python")
    assert "max_batch_size: 0" in config and "dims: [ 1, 1, 8, 8, 8 ]" in config
    assert "dynamic_batching" not in config


# --- the commands ----------------------------------------------------------------------------------


def test_models_commands(tmp_path: Path, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RADLOOP_CONFIG", raising=False)
    runner = CliRunner()
    spec_file = tmp_path / "cxr.yaml"
    spec_file.write_text(json.dumps(tm.classifier_spec()))
    added = runner.invoke(
        app,
        [
            "models",
            "add",
            str(sources["cls_onnx"]),
            "--name",
            "cxr_classifier",
            "--version",
            "1",
            "--spec",
            str(spec_file),
            "--json",
        ],
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)[0]["task"] == "classification"
    bundle = runner.invoke(
        app, ["models", "add", str(sources["bundle"]), "--name", "ct_spleen", "--version", "0.1.0"]
    )
    assert bundle.exit_code == 0, bundle.output
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert [(r["name"], r["version"], r["source"]) for r in listed] == [
        ("ct_spleen", "0.1.0", "monai_bundle"),
        ("cxr_classifier", "1", "onnx"),
    ]
    shown = json.loads(runner.invoke(app, ["models", "show", "ct_spleen"]).output)
    assert shown["roi_size"] == [32, 32, 32]
    built = runner.invoke(app, ["models", "build-repo", str(tmp_path / "repo"), "--model", "ct_spleen"])
    assert built.exit_code == 0, built.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["ct_spleen"]
