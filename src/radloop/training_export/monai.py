"""MONAI / Clara Train datalist: ``datalist.json`` with ``training`` and ``validation`` lists.

Layout (paths in the datalist are relative to the dataset root, as
``monai.data.load_decathlon_datalist(path, data_list_key="training")`` resolves them)::

    <out>/imagesTr/<case>.nii.gz
    <out>/labelsTr/<case>.nii.gz
    <out>/datalist.json        {"name", "description", "labels": {"0": "background", …},
                                "modality": {"0": …}, "numTraining", "numValidation",
                                "training": [{"image", "label"}, …], "validation": […]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from radloop.training_export.formats import CaseFiles, DatasetIndex, DatasetInfo, ExportFormat


def entries(cases: tuple[CaseFiles, ...]) -> list[dict[str, str]]:
    """``[{"image": …, "label": …}, …]`` in case order."""
    return [{"image": c.image, "label": c.label} for c in cases]


class MonaiDatalist:
    """The ``monai`` format."""

    name: ClassVar[ExportFormat] = ExportFormat.monai

    def dataset_root(self, out_dir: Path, info: DatasetInfo) -> Path:
        """The dataset fills ``out_dir``."""
        return out_dir

    def image_path(self, case_id: str) -> str:
        """``imagesTr/<case>.nii.gz``."""
        return f"imagesTr/{case_id}.nii.gz"

    def label_path(self, case_id: str) -> str:
        """``labelsTr/<case>.nii.gz``."""
        return f"labelsTr/{case_id}.nii.gz"

    def index_files(self, index: DatasetIndex) -> dict[str, Any]:
        """``datalist.json``."""
        return {
            "datalist.json": {
                "name": index.info.name,
                "description": index.info.description,
                "labels": index.labels_by_value(),
                "modality": {"0": index.channel_name},
                "numTraining": len(index.training),
                "numValidation": len(index.validation),
                "training": entries(index.training),
                "validation": entries(index.validation),
            }
        }
