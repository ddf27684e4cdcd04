"""Models that ship inside an installed Python package: deepbet's two brain-extraction networks,
and the TAPS prostate network of lavlab-taps.

deepbet 1.0.2 (MIT) puts ``model.pt`` (the mask network, 256³) and ``bbox_model.pt`` (the
bounding-box network, 128³) in its wheel under ``data/models``. They are TorchScript files
taking ``(N, 1, D, H, W)`` float32 and returning a two-channel softmax ``(N, 2, D, H, W)``.
``radloop models import-deepbet`` copies them into the model store with these specs; until then
the resolver serves them from the wheel in process.

lavlab-taps 1.1.2 (MIT) puts ``model_v1.onnx`` in its wheel under ``taps/resources``: a SegResNetDS
taking ``(N, 1, 128, 128, 32)`` float32 (a 0.8 × 0.8 × 3 mm RAS patch, z-scored) and returning one
channel of prostate logits. The wheel requires ``onnxruntime-gpu``; on a CPU machine install it
with ``pip install --no-deps lavlab-taps==1.1.2`` (its other requirements, torch, MONAI, nibabel,
numpy and scipy, are radloop's own). ``radloop models import-taps`` copies the network into the
store as ``taps_prostate`` with its spec and provenance (licence MIT); until then the resolver serves
it from the wheel in process. The package itself is never imported by radloop (it imports torch
and MONAI at import time and configures logging); only its files are read.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from radloop.core.errors import InferenceError
from radloop.inference.model_spec import CodeSpec, IntensitySpec, LabelSpec, ModelSpec, TensorSpecModel

if TYPE_CHECKING:
    from radloop.inference.onnx_runtime import OnnxRuntimeBackend

DEEPBET_VERSION = "1.0.2"
DEEPBET_BBOX = "deepbet_bbox"
DEEPBET_MASK = "deepbet_mask"
BRAIN_LABEL = LabelSpec(value=1, name="Brain", type=CodeSpec(value="12738006", meaning="Brain"))

TAPS_DISTRIBUTION = "lavlab-taps"
TAPS_VERSION = "1.1.2"
TAPS_MODEL = "taps_prostate"
TAPS_FILE = "taps/resources/model_v1.onnx"
PROSTATE_LABEL = LabelSpec(value=1, name="Prostate", type=CodeSpec(value="41216001", meaning="Prostate"))
TAPS_PROVENANCE = {
    "package": TAPS_DISTRIBUTION,
    "package_version": TAPS_VERSION,
    "file": TAPS_FILE,
    "license": "MIT",
    "source": "https://github.com/laviolette-lab/taps",
    "training_code": "https://github.com/laviolette-lab/TAPS-Training-Code",
    "install": "pip install --no-deps lavlab-taps==1.1.2  (its onnxruntime-gpu requirement left out on CPU)",
}
"""What ``radloop models import-taps`` records beside the network (``provenance.json``)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside an installed package and its spec."""

    spec: ModelSpec
    path: Path


def deepbet_model_path(filename: str) -> Path:
    """Path of ``data/models/<filename>`` in the installed deepbet wheel (deepbet is not imported)."""
    try:
        dist = importlib.metadata.distribution("deepbet")
    except importlib.metadata.PackageNotFoundError as e:
        raise InferenceError(f"deepbet is not installed: cannot locate its {filename}") from e
    for file in dist.files or ():
        if file.as_posix() == f"data/models/{filename}":
            return Path(str(file.locate()))
    raise InferenceError(f"the installed deepbet {dist.version} has no data/models/{filename}")


def deepbet_spec(name: str, shape: tuple[int, int, int], description: str) -> ModelSpec:
    """Spec of one deepbet network: (N, 1, *shape) normalised image → (N, 2, *shape) softmax."""
    return ModelSpec(
        name=name,
        version=DEEPBET_VERSION,
        format="torchscript",
        source="package",
        file="model.pt",
        description=description,
        inputs=[TensorSpecModel(name="input__0", dtype="float32", shape=[-1, 1, *shape])],
        outputs=[TensorSpecModel(name="output__0", dtype="float32", shape=[-1, 2, *shape])],
        orientation="RAS",
        labels=[BRAIN_LABEL],
        max_batch_size=2,
    )


def packaged_models() -> dict[str, PackagedModel]:
    """deepbet's two networks by model name (empty when deepbet is not installed)."""
    try:
        mask = deepbet_model_path("model.pt")
        bbox = deepbet_model_path("bbox_model.pt")
    except InferenceError:
        return {}
    return {
        DEEPBET_BBOX: PackagedModel(
            deepbet_spec(DEEPBET_BBOX, (128, 128, 128), "deepbet head bounding-box network (128³)"), bbox
        ),
        DEEPBET_MASK: PackagedModel(
            deepbet_spec(DEEPBET_MASK, (256, 256, 256), "deepbet brain mask network (256³ box)"), mask
        ),
    }


def taps_model_path() -> Path:
    """Path of ``taps/resources/model_v1.onnx`` in the installed lavlab-taps wheel (not imported)."""
    try:
        dist = importlib.metadata.distribution(TAPS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise InferenceError(
            f"{TAPS_DISTRIBUTION} is not installed: "
            f"`pip install --no-deps {TAPS_DISTRIBUTION}=={TAPS_VERSION}`"
        ) from e
    for file in dist.files or ():
        if file.as_posix() == TAPS_FILE:
            return Path(str(file.locate()))
    raise InferenceError(f"the installed {TAPS_DISTRIBUTION} {dist.version} has no {TAPS_FILE}")


def taps_spec() -> ModelSpec:
    """Spec of the TAPS network: the patch and preprocessing it was trained with, one sigmoid channel."""
    return ModelSpec(
        name=TAPS_MODEL,
        version=TAPS_VERSION,
        format="onnx",
        source="package",
        file="model.onnx",
        description="TAPS whole-gland prostate segmentation of T2-weighted MR (lavlab-taps 1.1.2, MIT)",
        inputs=[TensorSpecModel(name="input", dtype="float32", shape=[-1, 1, 128, 128, 32])],
        outputs=[TensorSpecModel(name="output", dtype="float32", shape=[-1, 1, 128, 128, 32])],
        orientation="RAS",
        spacing=[0.8, 0.8, 3.0],
        intensity=IntensitySpec(kind="zscore", nonzero=True),
        roi_size=[128, 128, 32],
        sw_batch_size=4,
        overlap=0.5,
        activation="sigmoid",
        threshold=0.55,
        labels=[PROSTATE_LABEL],
        max_batch_size=8,
    )


def taps_packaged() -> PackagedModel | None:
    """The TAPS network in the installed wheel, None when lavlab-taps is not installed."""
    try:
        return PackagedModel(taps_spec(), taps_model_path())
    except InferenceError:
        return None


def taps_backend(path: Path) -> OnnxRuntimeBackend:
    """The TAPS network from ``path`` in process (ONNX Runtime, CPU)."""
    from radloop.inference.onnx_runtime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, TAPS_MODEL, TAPS_VERSION)
