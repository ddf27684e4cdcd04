"""Medical Segmentation Decathlon ``dataset.json`` (the layout of the MSD tasks).

Layout::

    <out>/imagesTr/<case>.nii.gz
    <out>/labelsTr/<case>.nii.gz
    <out>/dataset.json   {"name", "description", "reference", "licence", "release",
                          "tensorImageSize": "3D", "modality": {"0": "MRI"},
                          "labels": {"0": "background", "1": …}, "numTraining", "numTest": 0,
                          "training": [{"image": "./imagesTr/…", "label": "./labelsTr/…"}],
                          "validation": […], "test": []}

The MSD has no validation list of its own: ``training`` holds the training side only and the
validation side is under ``validation`` (MONAI's ``load_decathlon_datalist`` reads either key),
so that no case is in both. ``numTraining`` counts the ``training`` list.
"""

from __future__ import annotations

from typing import Any, ClassVar

from radloop.training_export.formats import CaseFiles, DatasetIndex, ExportFormat
from radloop.training_export.monai import MonaiDatalist


def _entries(cases: tuple[CaseFiles, ...]) -> list[dict[str, str]]:
    """MSD writes paths as ``./imagesTr/…``."""
    return [{"image": f"./{c.image}", "label": f"./{c.label}"} for c in cases]


class MsdDataset(MonaiDatalist):
    """The ``msd`` format: the same folders as ``monai``, a different index file."""

    name: ClassVar[ExportFormat] = ExportFormat.msd

    def index_files(self, index: DatasetIndex) -> dict[str, Any]:
        """``dataset.json``."""
        return {
            "dataset.json": {
                "name": index.info.name,
                "description": index.info.description,
                "reference": "radloop: reviewed AI results",
                "licence": "see the data use agreement of the exporting site",
                "release": "1.0",
                "tensorImageSize": "3D",
                "modality": {"0": index.channel_name},
                "labels": index.labels_by_value(),
                "numTraining": len(index.training),
                "numValidation": len(index.validation),
                "numTest": 0,
                "training": _entries(index.training),
                "validation": _entries(index.validation),
                "test": [],
            }
        }
