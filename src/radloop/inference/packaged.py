"""Models that ship inside an installed Python package: deepbet's two brain-extraction networks.

deepbet 1.0.2 (MIT) puts ``model.pt`` (the mask network, 256³) and ``bbox_model.pt`` (the
bounding-box network, 128³) in its wheel under ``data/models``. They are TorchScript files
taking ``(N, 1, D, H, W)`` float32 and returning a two-channel softmax ``(N, 2, D, H, W)``.
``radloop models import-deepbet`` copies them into the model store with these specs; until then
the resolver serves them from the wheel in process.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from radloop.core.errors import InferenceError
from radloop.inference.model_spec import CodeSpec, LabelSpec, ModelSpec, TensorSpecModel

DEEPBET_VERSION = "1.0.2"
DEEPBET_BBOX = "deepbet_bbox"
DEEPBET_MASK = "deepbet_mask"
BRAIN_LABEL = LabelSpec(value=1, name="Brain", type=CodeSpec(value="12738006", meaning="Brain"))


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
