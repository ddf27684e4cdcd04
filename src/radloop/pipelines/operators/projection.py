"""Projection radiographs (CR, DX, MG …) as a one-frame :class:`Volume`, for 2-D classifiers.

A radiograph has no patient geometry (no ImagePositionPatient / ImageOrientationPatient), so
:func:`~radloop.pipelines.volume.load_volume` refuses it. Here the first image of the series
becomes a ``(1, rows, columns)`` volume whose affine is in *image* coordinates: a 1 mm frame
axis and the detector pixel spacing (PixelSpacing, else ImagerPixelSpacing, else 1 mm) along
rows and columns, origin 0. It is good for classification and for referencing the image in a
report; it is not a position in the patient. Pixel values go through the Modality LUT's linear
form, and MONOCHROME1 images are inverted so that a model always sees bright = dense.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from radloop.core.errors import InputDataError
from radloop.pipelines.ports import SeriesInput, SourceFrame, Volume
from radloop.pipelines.registry import NoOptions, Operator, OperatorContext


class ProjectionImage(Operator[NoOptions]):
    """The first image of a series of projection radiographs, as a one-frame volume."""

    name: ClassVar[str] = "dicom.projection_image"
    inputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}
    outputs: ClassVar[Mapping[str, type]] = {"volume": Volume}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``{"volume": Volume}`` of shape ``(1, rows, columns)``."""
        series: SeriesInput = inputs["series"]
        path, ds = first_image(series.paths)
        volume = Volume(
            array=pixels(ds, path)[None],
            affine=np.diag([1.0, *spacing(ds), 1.0]),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            series=series.ref,
            modality=str(ds.get("Modality", series.modality)),
            source_frames=(SourceFrame(str(ds.SOPClassUID), str(ds.SOPInstanceUID)),),
            source_paths=(path,),
        )
        ctx.logger.info("%s: %s %s, %s", self.name, volume.modality, path.name, volume.array.shape[1:])
        return {"volume": volume}


def first_image(paths: tuple[Path, ...]) -> tuple[Path, Dataset]:
    """The first file (in the given order) that holds pixel data."""
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise InputDataError(f"{path.name}: not readable as DICOM: {e}") from e
        if "PixelData" in ds:
            return path, ds
    raise InputDataError("the series has no image with pixel data")


def pixels(ds: Dataset, path: Path) -> npt.NDArray[np.float32]:
    """The first frame as float32 through the rescale, MONOCHROME1 inverted."""
    try:
        array = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as e:  # pydicom raises many types for undecodable pixel data
        raise InputDataError(f"{path.name}: cannot decode pixel data: {e}") from e
    if array.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputDataError(f"{path.name}: expected a grayscale image, got pixel array {array.shape}")
    array = array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        array = array.max() + array.min() - array
    return np.ascontiguousarray(array, dtype=np.float32)


def spacing(ds: Dataset) -> tuple[float, float]:
    """Row and column spacing in mm: PixelSpacing, else ImagerPixelSpacing, else 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return 1.0, 1.0
