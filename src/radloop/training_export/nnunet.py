"""nnU-Net v2 raw dataset: ``Dataset<NNN>_<Name>/`` as ``nnUNetv2_plan_and_preprocess`` reads it.

Layout (``<out>`` is, or goes into, ``$nnUNet_raw``)::

    <out>/Dataset500_BrainExtraction/
        imagesTr/<case>_0000.nii.gz      one channel: suffix _0000
        labelsTr/<case>.nii.gz           consecutive label values 0…n
        dataset.json                     {"channel_names": {"0": "MRI"},
                                          "labels": {"background": 0, "Brain": 1},
                                          "numTraining": N, "file_ending": ".nii.gz", …}
        splits_final.json                [{"train": [case, …], "val": [case, …]}]

nnU-Net trains on every case in ``imagesTr``; the patient-level split is given as one fold in
``splits_final.json``. nnU-Net's planner (``nnUNetv2_plan_and_preprocess``) copies that file
into ``$nnUNet_preprocessed/Dataset<NNN>_<Name>/``; train ``fold 0`` to use it. It is written
only when the validation side has a case (an empty ``val`` would stop nnU-Net's trainer;
without the file nnU-Net makes its own five folds, by case, not by patient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from radloop.training_export.formats import DatasetIndex, DatasetInfo, ExportFormat
from radloop.training_export.labels import BACKGROUND

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"


class NnunetRawDataset:
    """The ``nnunet`` format."""

    name: ClassVar[ExportFormat] = ExportFormat.nnunet

    def dataset_root(self, out_dir: Path, info: DatasetInfo) -> Path:
        """``<out>/Dataset<NNN>_<Name>``."""
        return out_dir / f"Dataset{info.dataset_id:03d}_{info.name}"

    def image_path(self, case_id: str) -> str:
        """``imagesTr/<case>_0000.nii.gz``."""
        return f"imagesTr/{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"

    def label_path(self, case_id: str) -> str:
        """``labelsTr/<case>.nii.gz``."""
        return f"labelsTr/{case_id}{FILE_ENDING}"

    def index_files(self, index: DatasetIndex) -> dict[str, Any]:
        """``dataset.json``; ``splits_final.json`` when there is a validation side (else None: removed)."""
        files: dict[str, Any] = {
            "dataset.json": {
                "name": index.info.name,
                "description": index.info.description,
                "channel_names": {"0": index.channel_name},
                "labels": {BACKGROUND: 0, **{label.name: label.value for label in index.labels}},
                "numTraining": len(index.training) + len(index.validation),
                "file_ending": FILE_ENDING,
            }
        }
        files["splits_final.json"] = (
            [{"train": [c.case_id for c in index.training], "val": [c.case_id for c in index.validation]}]
            if index.validation
            else None  # no validation side (any more): no fold of ours
        )
        return files
