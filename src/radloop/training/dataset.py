"""A training export read for fine-tuning: its cases on the network's grid, per split, and its hash.

The export is a MONAI datalist folder (``radloop export dataset --format monai``): ``datalist.json``
with ``training`` and ``validation`` lists, read with MONAI's ``load_decathlon_datalist``; images
and labels are NIfTI. Each image goes through the model spec's own pre-processing
(:func:`radloop.inference.preprocess.prepare`: orientation, spacing, intensity), exactly as at
inference; its label follows the same geometry with nearest-neighbour resampling.

Assumption: the export's NIfTI files are in their canonical (RAS) orientation; a spec without
``orientation`` therefore sees that axis order, not the DICOM (frame, row, column) order.

The content hash covers ``datalist.json`` and every image and label file it names, so the
provenance of a trained version says exactly which data it learnt from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from radloop.core.errors import ConfigError
from radloop.core.geometry import lps_to_ras
from radloop.inference.model_spec import IntensitySpec, ModelSpec
from radloop.inference.preprocess import prepare

DATALIST = "datalist.json"


@dataclass(frozen=True)
class TrainingCase:
    """One case on the network's grid: the normalised image and its integer labels (same shape)."""

    case_id: str
    image: npt.NDArray[np.float32]
    label: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainingData:
    """An export's cases, split as the export split them, and its identity."""

    root: Path
    name: str
    content_hash: str
    training: tuple[TrainingCase, ...]
    validation: tuple[TrainingCase, ...]

    def case_ids(self) -> dict[str, list[str]]:
        """The case pseudonyms per split (for the provenance)."""
        return {
            "training": [c.case_id for c in self.training],
            "validation": [c.case_id for c in self.validation],
        }


def load_training_data(root: Path, spec: ModelSpec) -> TrainingData:
    """Read the export at ``root`` for the model ``spec``; :class:`ConfigError` if it is not one."""
    from monai.data.decathlon_datalist import load_decathlon_datalist

    datalist = root / DATALIST
    if not datalist.is_file():
        raise ConfigError(
            f"{root} is not a MONAI datalist export (no {DATALIST}): export it with "
            "`radloop export dataset --format monai`"
        )
    splits = {}
    for key in ("training", "validation"):
        entries = load_decathlon_datalist(str(datalist), True, key, str(root)) if _has(datalist, key) else []
        splits[key] = tuple(_case(Path(e["image"]), Path(e["label"]), spec) for e in entries)
    if not splits["training"]:
        raise ConfigError(f"export {root} has no training case")
    return TrainingData(root, root.name, content_hash(root), splits["training"], splits["validation"])


def content_hash(root: Path) -> str:
    """SHA-256 over ``datalist.json`` and the files it names (paths and bytes, in sorted order)."""
    data = json.loads((root / DATALIST).read_text())
    names = {DATALIST}
    for key in ("training", "validation"):
        for entry in data.get(key, []):
            names.update(str(entry[k]) for k in ("image", "label") if k in entry)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _has(datalist: Path, key: str) -> bool:
    return bool(json.loads(datalist.read_text()).get(key))


def _case(image_path: Path, label_path: Path, spec: ModelSpec) -> TrainingCase:
    image_nii: Any = nib.load(image_path)
    label_nii: Any = nib.load(label_path)
    affine = lps_to_ras(np.asarray(image_nii.affine, dtype=np.float64))  # RAS ↔ LPS: its own inverse
    prepared = prepare(np.asarray(image_nii.dataobj, dtype=np.float32), affine, spec)
    geometry_only = spec.model_copy(update={"intensity": IntensitySpec()})
    labels = np.asarray(label_nii.dataobj).astype(np.float32)
    oriented = prepare(labels, affine, geometry_only.model_copy(update={"spacing": None})).image
    if oriented.shape != prepared.image.shape:
        zoom = [t / s for t, s in zip(prepared.image.shape, oriented.shape, strict=True)]
        oriented = ndimage.zoom(oriented, zoom, order=0, grid_mode=True, mode="nearest")
    name = image_path.name.removesuffix(".nii.gz").removesuffix(".nii")
    return TrainingCase(name, prepared.image, np.rint(oriented).astype(np.int64))
