"""Dataset formats: where a format puts images and labels, and the index files it writes.

A format is a small class (:class:`DatasetFormat`) registered by name in :data:`FORMATS`:
``monai`` (MONAI / Clara Train datalist), ``msd`` (Medical Segmentation Decathlon
``dataset.json``) and ``nnunet`` (nnU-Net v2 raw dataset). Formats only lay out files and build
JSON from a :class:`DatasetIndex`; the export itself (:mod:`.export`) is the same for all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from radloop.training_export.labels import BACKGROUND, DatasetLabel

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


class ExportFormat(StrEnum):
    """The dataset formats radloop writes."""

    monai = "monai"
    msd = "msd"
    nnunet = "nnunet"


@dataclass(frozen=True)
class DatasetInfo:
    """Name and number of a dataset (nnU-Net: ``Dataset<id>_<name>``; MONAI/MSD: the ``name``)."""

    name: str
    dataset_id: int = 500
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"dataset name {self.name!r} must be 1-64 letters, digits or '-', starting alnum"
            )
        if not 1 <= self.dataset_id <= 999:
            raise ValueError(f"dataset id {self.dataset_id} must lie in 1…999 (nnU-Net's three digits)")


def default_dataset_name(pipeline: str) -> str:
    """A dataset name from a pipeline name: ``brain-extraction`` → ``BrainExtraction``."""
    words = re.split(r"[^A-Za-z0-9]+", pipeline)
    return "".join(w[:1].upper() + w[1:] for w in words if w)[:64] or "Dataset"


@dataclass(frozen=True)
class CaseFiles:
    """One exported case: its identifier and its image and label paths relative to the dataset root."""

    case_id: str
    image: str
    label: str


@dataclass(frozen=True)
class DatasetIndex:
    """Everything an index file says: the dataset, its labels and channel, and the cases per side."""

    info: DatasetInfo
    labels: tuple[DatasetLabel, ...]
    modality: str
    training: tuple[CaseFiles, ...]
    validation: tuple[CaseFiles, ...]

    @property
    def channel_name(self) -> str:
        """The channel name: ``CT`` (nnU-Net normalises CT by it), ``MRI`` for MR, else the modality."""
        return {"MR": "MRI", "CT": "CT"}.get(self.modality, self.modality or "image")

    def labels_by_value(self) -> dict[str, str]:
        """``{"0": "background", "1": "Brain", …}`` (MSD / MONAI)."""
        return {"0": BACKGROUND, **{str(label.value): label.name for label in self.labels}}


class DatasetFormat(Protocol):
    """Where a format puts files, and the JSON index files it writes (name → content)."""

    name: ClassVar[ExportFormat]

    def dataset_root(self, out_dir: Path, info: DatasetInfo) -> Path:
        """The folder the dataset fills (``out_dir`` itself, or a folder inside it)."""
        ...

    def image_path(self, case_id: str) -> str:
        """The image file of a case, relative to the dataset root."""
        ...

    def label_path(self, case_id: str) -> str:
        """The label file of a case, relative to the dataset root."""
        ...

    def index_files(self, index: DatasetIndex) -> dict[str, Any]:
        """The index files to write: relative path → JSON content (None: remove the file if present)."""
        ...
