"""An nnU-Net v2 trained-model folder as a TorchScript store version (``radloop models add FOLDER``).

The folder is what ``nnUNetv2_train`` writes: ``nnUNet_results/Dataset<NNN>_<Name>/
<trainer>__<plans>__<configuration>/`` with ``plans.json``, ``dataset.json`` and
``fold_<f>/checkpoint_final.pth``. radloop rebuilds the network with nnU-Net's own code (the
trainer's ``build_network_architecture`` from the plans, deep supervision off), loads the fold's
weights and traces it to TorchScript inside a small wrapper, so the in-process TorchScript and
Triton backends serve it like any other version. The spec is read from the plans:

* **Axes.** nnU-Net reads a NIfTI with SimpleITK as a (z, y, x) array of the stored voxels, then
  transposes it by ``transpose_forward``. radloop's exports store voxels in the closest RAS
  orientation, and radloop feeds networks MONAI's (x, y, z) array in the spec's orientation, so
  the spec says ``orientation: RAS`` and the wrapper reverses the axes and applies
  ``transpose_forward`` before the network (and undoes both after it).
* **Spacing and patch**: the configuration's ``spacing`` and ``patch_size`` in (x, y, z) order.
* **Intensity**: ``CTNormalization`` (clip to the dataset's 0.5–99.5 percentiles, subtract its
  mean, divide by its standard deviation) is exactly ``scale_range`` from the percentiles to their
  normalised values; ``ZScoreNormalization`` is ``zscore`` (over non-zero voxels when
  ``use_mask_for_norm``); ``NoNormalization`` is ``none``. Other schemes are refused.
* **Labels**: ``dataset.json``'s ``labels`` (SNOMED CT codes for known names, see
  :func:`~radloop.inference.model_import.structure_code`); softmax over the output channels.

Refused with a clear error: 2-D and cascade configurations, more than one input channel,
region-based labels. Not reproduced (documented): nnU-Net's mirroring test-time augmentation and
its Gaussian-weighted window blending (radloop's sliding window averages overlaps), and its
resampling order (radloop resamples with MONAI when the series' spacing differs from the plans').
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from radloop.core.errors import ConfigError
from radloop.inference.model_import import file_sha256, read_json_object, structure_code

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
SUPPORTED_NORMALIZATION = ("CTNormalization", "ZScoreNormalization", "NoNormalization")


def nnunet_checkpoint(folder: Path, fold: str | None = None) -> Path:
    """The fold's final checkpoint: ``fold`` if given, else the only (or ``fold_0``'s) one."""
    found = sorted(folder.glob(f"fold_*/{CHECKPOINT}"))
    if fold is not None:
        chosen = folder / f"fold_{fold}" / CHECKPOINT
        if not chosen.is_file():
            raise ConfigError(f"{folder}: no fold_{fold}/{CHECKPOINT}")
        return chosen
    if not found:
        raise ConfigError(f"{folder}: no fold_*/{CHECKPOINT}; train it with nnUNetv2_train first")
    if len(found) == 1:
        return found[0]
    first = folder / "fold_0" / CHECKPOINT
    if first.is_file():
        logger.warning("%s holds %d folds; importing fold_0 (no ensembling)", folder, len(found))
        return first
    raise ConfigError(f"{folder}: several folds and no fold_0; name one in the spec overrides")


def nnunet_fields(folder: Path, converted: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Convert the folder's network into TorchScript at ``converted``; its spec fields and the text
    files kept beside it (plans, dataset and where it came from)."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = read_json_object(folder / "plans.json")
    dataset = read_json_object(folder / "dataset.json")
    checkpoint_path = nnunet_checkpoint(folder)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    configuration = str(checkpoint.get("init_args", {}).get("configuration", ""))
    fold = checkpoint_path.parent.name
    trainer_name = str(checkpoint.get("trainer_name", ""))
    manager = PlansManager(plans)
    if configuration not in manager.available_configurations:
        raise ConfigError(f"{folder}: the checkpoint's configuration {configuration!r} is not in plans.json")
    config = manager.get_configuration(configuration)
    if config.previous_stage_name is not None:
        raise ConfigError(f"{folder}: cascade configuration {configuration!r} needs its previous stage")
    if len(config.patch_size) != 3:
        raise ConfigError(f"{folder}: configuration {configuration!r} is not 3-D; radloop imports 3-D models")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise ConfigError(f"{folder}: {len(channels)} input channels; radloop imports one-channel models")
    labels = _labels(dataset, folder)
    forward = [int(a) for a in manager.transpose_forward]
    patch_zyx = _untranspose([int(p) for p in config.patch_size], forward)
    spacing_zyx = _untranspose([float(s) for s in config.spacing], forward)
    network = _network(manager, config, dataset, trainer_name, checkpoint["network_weights"])
    example = torch.zeros((1, 1, *patch_zyx[::-1]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_wrap(network, forward).eval(), example)  # type: ignore[no-untyped-call]
        converted.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(converted))
    fields: dict[str, Any] = {
        "format": "torchscript",
        "task": "segmentation",
        "description": f"nnU-Net v2 {trainer_name} {configuration} ({folder.name}, {fold})",
        "inputs": [{"name": "input__0", "dtype": "float32", "shape": [-1, 1, -1, -1, -1]}],
        "outputs": [{"name": "output__0", "dtype": "float32", "shape": [-1, len(labels) + 1, -1, -1, -1]}],
        "orientation": "RAS",
        "spacing": spacing_zyx[::-1],
        "intensity": _intensity(manager, config, folder),
        "roi_size": patch_zyx[::-1],
        "overlap": 0.5,
        "activation": "softmax",
        "labels": labels,
    }
    provenance = {
        "folder": str(folder),
        "checkpoint": str(checkpoint_path.relative_to(folder)),
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "trainer": trainer_name,
        "configuration": configuration,
        "plans_name": manager.plans_name,
        "dataset_name": manager.dataset_name,
        "transpose_forward": forward,
        "not_reproduced": ["mirroring test-time augmentation", "Gaussian window weighting"],
    }
    files = {
        "nnunet-plans.json": json.dumps(plans, indent=2),
        "nnunet-dataset.json": json.dumps(dataset, indent=2),
        "nnunet-import.json": json.dumps(provenance, indent=2),
    }
    return fields, files


def _wrap(network: Any, forward: list[int]) -> Any:
    """``network`` inside a module that takes radloop's (N, C, x, y, z) array: it reverses the axes to
    nnU-Net's (z, y, x), transposes them by ``transpose_forward``, and undoes both on the output."""
    import torch

    class NnUNetAxes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            inverse = [forward.index(a) for a in range(3)]
            self.to_nnunet = [0, 1, *[2 + (2 - a) for a in forward]]
            self.from_nnunet = [0, 1, *[2 + inverse[2 - i] for i in range(3)]]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.network(x.permute(self.to_nnunet).contiguous())
            return out.permute(self.from_nnunet).contiguous()

    return NnUNetAxes()


def _untranspose(values: list[Any], forward: list[int]) -> list[Any]:
    """Values given per transposed axis, back in the order of the (z, y, x) array nnU-Net read."""
    out: list[Any] = [None] * len(values)
    for position, axis in enumerate(forward):
        out[axis] = values[position]
    return out


def _labels(dataset: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    labels = []
    for label_name, value in (dataset.get("labels") or {}).items():
        if not isinstance(value, int):
            raise ConfigError(f"{folder}: region-based label {label_name!r} ({value}); not supported")
        if value == 0:
            continue
        code = structure_code(label_name)
        labels.append({"value": value, "name": label_name, "type": code.model_dump()})
    if not labels:
        raise ConfigError(f"{folder}: dataset.json names no foreground label")
    expected = list(range(1, len(labels) + 1))
    if sorted(label["value"] for label in labels) != expected:
        raise ConfigError(f"{folder}: labels must be 0…{len(labels)} without gaps")
    return sorted(labels, key=lambda label: label["value"])


def _intensity(manager: Any, config: Any, folder: Path) -> dict[str, Any]:
    scheme = str(config.normalization_schemes[0])
    if scheme == "NoNormalization":
        return {"kind": "none"}
    if scheme == "ZScoreNormalization":
        return {"kind": "zscore", "nonzero": bool(config.use_mask_for_norm[0])}
    if scheme == "CTNormalization":
        props = manager.foreground_intensity_properties_per_channel["0"]
        mean, std = float(props["mean"]), max(float(props["std"]), 1e-8)
        low, high = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        return {
            "kind": "scale_range",
            "a_min": low,
            "a_max": high,
            "b_min": (low - mean) / std,
            "b_max": (high - mean) / std,
            "clip": True,
        }
    raise ConfigError(f"{folder}: nnU-Net normalization {scheme!r} has no radloop equivalent")


def _network(manager: Any, config: Any, dataset: dict[str, Any], trainer_name: str, weights: Any) -> Any:
    """The trained network rebuilt by nnU-Net's own code, weights loaded, in eval mode."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    trainer = recursive_find_python_class(
        str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"),
        trainer_name,
        "nnunetv2.training.nnUNetTrainer",
    )
    if trainer is None:
        raise ConfigError(f"nnU-Net trainer class {trainer_name!r} is not installed")
    network = trainer.build_network_architecture(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dataset),
        manager.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(weights)
    return network.eval()
