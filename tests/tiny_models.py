"""Small networks built by the tests, for the pipelines whose real models users supply.

No real CT organ-segmentation or chest X-ray model can be had here (see
`../shared/data/README.md`), so the tests build tiny ones with fixed weights whose answer is
known in advance: a smoothed threshold (3-D segmentation) and pooled-intensity scores (2-D
classification). They are saved as TorchScript, exported to ONNX, and packed as a MONAI bundle
(`configs/metadata.json`, `configs/inference.json`, `models/model.ts`) exactly as MONAI's
bundle layout has it. A plain module: tests import it as `tiny_models`.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

HU_WINDOW = (-57.0, 164.0)
"""The intensity window of MONAI's spleen_ct_segmentation bundle, used by the tiny bundle too."""
SCORE_CUT = 0.5
"""After scaling HU_WINDOW to [0, 1], the tiny segmenter labels voxels above this (≈ 53.5 HU)."""


class SmoothThreshold(torch.nn.Module):
    """(N, 1, D, H, W) → (N, 2, D, H, W) logits: [0, mean₃ₓ₃ₓ₃(x) − cut] (argmax = smoothed x > cut)."""

    def __init__(self, cut: float = SCORE_CUT, kernel: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, kernel, padding=kernel // 2, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1.0 / kernel**3)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smooth = self.conv(x) - self.cut
        return torch.cat([torch.zeros_like(smooth), smooth], dim=1) * 10.0


class TwoChannelThreshold(torch.nn.Module):
    """(N, 2, D, H, W) → (N, 2, D, H, W) logits: [0, mean₃ₓ₃ₓ₃(x₀) − ½·mean₃ₓ₃ₓ₃(x₁) − cut/2]: a
    2-input network (two series as channels) with fixed weights."""

    def __init__(self, cut: float = SCORE_CUT, kernel: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 1, kernel, padding=kernel // 2, bias=False)
        with torch.no_grad():
            self.conv.weight[:, 0] = 1.0 / kernel**3
            self.conv.weight[:, 1] = -0.5 / kernel**3
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.conv(x) - self.cut / 2
        return torch.cat([torch.zeros_like(score), score], dim=1) * 10.0


class PooledScores(torch.nn.Module):
    """(N, 1, H, W) → (N, 3) logits from the image's mean, centre mean and spread (fixed weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        mean = x.mean(dim=(1, 2, 3))
        centre = x[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean(dim=(1, 2, 3))
        spread = x.std(dim=(1, 2, 3))
        return torch.stack([4 * (mean - 0.5), 4 * (centre - mean), 4 * (spread - 0.25)], dim=1)


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    """``torch.jit.script`` the module (eval mode) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what bundles and Triton load
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def save_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str = "image",
    output_name: str = "logits",
    dynamic_spatial: bool = True,
) -> Path:
    """Export to ONNX with a dynamic batch axis (and dynamic spatial axes if asked)."""
    axes = {0: "batch"} | ({i: f"d{i}" for i in range(2, example.dim())} if dynamic_spatial else {})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that the TorchScript-based exporter is legacy
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={
                input_name: axes,
                output_name: {0: "batch"}
                | ({i: f"d{i}" for i in range(2, example.dim())} if dynamic_spatial else {}),
            },
            dynamo=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def segmenter_spec(
    name: str = "ct_organs", label: str = "Spleen", code: str = "78961009", roi_size: list[int] | None = None
) -> dict[str, Any]:
    """Spec fields for the tiny segmenter on CT (window HU_WINDOW → [0, 1], one label)."""
    return {
        "description": "test network: smoothed HU threshold (built by the tests)",
        "intensity": {
            "kind": "scale_range",
            "a_min": HU_WINDOW[0],
            "a_max": HU_WINDOW[1],
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        },
        "labels": [{"value": 1, "name": label, "type": {"value": code, "meaning": label}}],
        "roi_size": roi_size,
        "sw_batch_size": 2,
    }


CXR_LABELS = [
    {
        "value": 0,
        "name": "Pleural effusion",
        "category": {"value": "404684003", "meaning": "Clinical finding"},
        "type": {"value": "60046008", "meaning": "Pleural effusion"},
    },
    {
        "value": 1,
        "name": "Cardiomegaly",
        "category": {"value": "404684003", "meaning": "Clinical finding"},
        "type": {"value": "8186001", "meaning": "Cardiomegaly"},
    },
    {
        "value": 2,
        "name": "Pneumothorax",
        "category": {"value": "404684003", "meaning": "Clinical finding"},
        "type": {"value": "36118008", "meaning": "Pneumothorax"},
    },
]


def classifier_spec() -> dict[str, Any]:
    """Spec fields for the tiny CXR classifier: 64×64 input, min-max window, sigmoid, three findings."""
    return {
        "task": "classification",
        "description": "test network: pooled intensity scores (built by the tests)",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 64, 64]}],
        "intensity": {"kind": "scale_range", "a_min": 0.0, "a_max": 30000.0, "b_min": 0.0, "b_max": 1.0},
        "activation": "sigmoid",
        "labels": CXR_LABELS,
    }


def make_bundle(folder: Path, roi_size: tuple[int, int, int] = (32, 32, 32)) -> Path:
    """A MONAI bundle of the tiny segmenter labelling "spleen" (MONAI's bundle layout and keys)."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    save_torchscript(SmoothThreshold(), folder / "models" / "model.ts")
    metadata = {
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": "2",
        "task": "Tiny spleen-like segmentation (test network)",
        "description": "A smoothed HU threshold packed as a MONAI bundle by radloop's tests.",
        "authors": "radloop tests",
        "copyright": "Apache-2.0",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": list(roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": list(roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "background", "1": "spleen"},
                }
            },
        },
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": HU_WINDOW[0],
                    "a_max": HU_WINDOW[1],
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi_size),
            "sw_batch_size": 4,
            "overlap": 0.5,
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    return folder
