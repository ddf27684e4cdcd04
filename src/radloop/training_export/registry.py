"""The dataset formats by name (explicit: one line per format)."""

from __future__ import annotations

from radloop.training_export.formats import DatasetFormat, ExportFormat
from radloop.training_export.monai import MonaiDatalist
from radloop.training_export.msd import MsdDataset
from radloop.training_export.nnunet import NnunetRawDataset

FORMATS: dict[ExportFormat, DatasetFormat] = {
    ExportFormat.monai: MonaiDatalist(),
    ExportFormat.msd: MsdDataset(),
    ExportFormat.nnunet: NnunetRawDataset(),
}


def dataset_format(name: ExportFormat | str) -> DatasetFormat:
    """The format registered as ``name``; :class:`ValueError` naming the known ones otherwise."""
    try:
        return FORMATS[ExportFormat(name)]
    except ValueError as e:
        known = ", ".join(f.value for f in ExportFormat)
        raise ValueError(f"unknown dataset format {name!r} (known: {known})") from e
