"""LabelMap → Secondary Capture images with the segmentation burned in, for PACSs that display
nothing else (no SEG, no RTSTRUCT).

One single-frame *Secondary Capture Image Storage* instance (RGB, 8 bit) per source slice: that
is what every PACS viewer shows and what users scroll through like the source series. By
default only the slices that hold a segment are written (``slices="labelled"``); ``"all"``
writes every slice. Each image is the source slice, windowed (the source's first WindowCenter /
WindowWidth when it has one, else the 0.5-99.5 % range of the whole volume), with

* each segment's outline (1 pixel, its display colour, the same as in the RTSTRUCT),
* a legend at the bottom (colour, segment label, algorithm name and version),
* a red "NOT FOR DIAGNOSIS" banner at the top,

and says so in its header: BurnedInAnnotation YES, ImageType DERIVED\\SECONDARY, a Source
Image Sequence naming the slice it was made from. The slice's plane (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, FrameOfReferenceUID) is copied from the source so that
viewers can place and sync it; these attributes are outside the SC IOD, which makes the
instances a Standard Extended SOP Class (PS3.4 B.1.3). The headers are built by highdicom's
``SCImage``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from radloop.core.uids import derived_uid
from radloop.pipelines.ports import LabelMap, Segment, Volume
from radloop.pipelines.writers.colours import segment_colour
from radloop.pipelines.writers.equipment import add_contributing_equipment
from radloop.pipelines.writers.source import SourceSlice, source_slices

logger = logging.getLogger(__name__)

BANNER_TEXT = "NOT FOR DIAGNOSIS"
BANNER_COLOUR = (170, 0, 0)
Rgb = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class CaptureSeries:
    """Where the images go: the new series' UID, number and description, who made them."""

    series_instance_uid: str
    series_number: int
    series_description: str
    manufacturer: str = "radloop"


def write_secondary_captures(
    labelmap: LabelMap,
    out_dir: Path,
    series: CaptureSeries,
    *,
    slices: Literal["labelled", "all"] = "labelled",
) -> list[Path]:
    """Write one burned-in SC image per (labelled) source slice; returns the files in slice order.

    SOP Instance UIDs derive from the series UID and the source image, so a retry rewrites the
    same instances.
    """
    if not labelmap.segments:
        raise ValueError("write_secondary_captures: labelmap has no segments")
    segments = sorted(labelmap.segments, key=lambda s: s.number)
    sources = source_slices(labelmap.reference)
    window = display_window(labelmap.reference, sources[0].header)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(sources):
        labels = labelmap.array[index]
        if slices == "labelled" and not np.isin(labels, [s.number for s in segments]).any():
            continue
        rgb = render_slice(
            labelmap.reference.array[index],
            labels,
            segments,
            window,
            f"AI: {labelmap.algorithm.name} {labelmap.algorithm.version}",
        )
        paths.append(_save(rgb, source, index + 1, labelmap, series, out_dir))
    logger.info("wrote %d secondary capture images (%s slices)", len(paths), slices)
    return paths


def display_window(volume: Volume, header: Dataset) -> tuple[float, float]:
    """(low, high) grey levels: ``header``'s first WindowCenter/Width, else the volume's 0.5-99.5 % range."""
    if "WindowCenter" in header and "WindowWidth" in header:
        centre, width = (_first_float(header[k].value) for k in ("WindowCenter", "WindowWidth"))
        if width > 0:
            return centre - width / 2, centre + width / 2
    low, high = (float(v) for v in np.percentile(volume.array, [0.5, 99.5]))
    return low, max(high, low + 1.0)


def _first_float(value: Any) -> float:
    """The first value of a possibly multi-valued DS element."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def render_slice(
    image: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    labels: npt.NDArray[np.integer],
    segments: Sequence[Segment],
    window: tuple[float, float],
    algorithm: str,
) -> Rgb:
    """The windowed slice as RGB with segment outlines, a legend and the banner burned in."""
    low, high = window
    grey = np.clip((image.astype(np.float64) - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for position, segment in enumerate(segments):
        mask = labels == segment.number
        rgb[mask & ~ndimage.binary_erosion(mask)] = segment_colour(position)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, min(rgb.shape[:2]) // 20))
    _banner(draw, canvas.width, font)
    _legend(draw, canvas.height, segments, algorithm, font)
    return np.asarray(canvas, dtype=np.uint8)


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _banner(draw: ImageDraw.ImageDraw, width: int, font: Font) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), BANNER_TEXT, font=font)
    height = bottom + 4
    draw.rectangle((0, 0, width - 1, height), fill=BANNER_COLOUR)
    draw.text(((width - (right - left)) // 2, 2), BANNER_TEXT, fill=(255, 255, 255), font=font)


def _legend(
    draw: ImageDraw.ImageDraw, height: int, segments: Sequence[Segment], algorithm: str, font: Font
) -> None:
    line = draw.textbbox((0, 0), "Ag", font=font)[3] + 3
    rows = [(segment_colour(i), s.label) for i, s in enumerate(segments)] + [(None, algorithm)]
    top = height - line * len(rows) - 2
    width = max(draw.textbbox((0, 0), text, font=font)[2] for _, text in rows) + line + 6
    draw.rectangle((0, top - 2, width, height - 1), fill=(0, 0, 0))
    for n, (colour, text) in enumerate(rows):
        y = top + n * line
        if colour is not None:
            draw.rectangle((3, y + 2, line - 2, y + line - 3), fill=colour)
        draw.text((line + 2, y), text, fill=(255, 255, 255), font=font)


def _save(
    rgb: Rgb, source: SourceSlice, number: int, labelmap: LabelMap, series: CaptureSeries, out_dir: Path
) -> Path:
    frame = source.frame
    sop_uid = derived_uid(series.series_instance_uid, frame.sop_instance_uid, str(frame.frame_number or 0))
    spacing = labelmap.reference.spacing
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source.header,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=sop_uid,
        instance_number=number,
        manufacturer=series.manufacturer,
        pixel_spacing=(spacing[1], spacing[2]),  # type: ignore[arg-type]  # highdicom takes floats
        patient_orientation=patient_orientation(labelmap.reference.affine),
        series_description=series.series_description[:64],
    )
    _describe_derivation(sc, source, labelmap)
    add_contributing_equipment(sc, labelmap.algorithm, series.manufacturer)
    path = out_dir / f"{sop_uid}.dcm"
    sc.save_as(path)
    return path


def _describe_derivation(sc: Dataset, source: SourceSlice, labelmap: LabelMap) -> None:
    """Burned-in annotation, where the image came from, and the plane of its source slice."""
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = source.header.get("Laterality") or None  # Type 2C in General Series; empty = unpaired
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    algorithm = labelmap.algorithm
    sc.DerivationDescription = (
        f"Source image with the outline of an automatic segmentation ({algorithm.name} "
        f"{algorithm.version}) burned in; not for diagnosis"
    )[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.frame.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.frame.sop_instance_uid
    if source.frame.frame_number is not None:
        reference.ReferencedFrameNumber = source.frame.frame_number
    sc.SourceImageSequence = DicomSequence([reference])
    affine = labelmap.reference.affine
    row_cosines = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    column_cosines = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    sc.ImagePositionPatient = [_ds(v) for v in source.position]
    sc.ImageOrientationPatient = [_ds(v) for v in (*row_cosines, *column_cosines)]
    sc.FrameOfReferenceUID = labelmap.reference.frame_of_reference_uid


def _ds(value: float) -> str:
    text = f"{round(float(value), 6) + 0.0:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def patient_orientation(affine: npt.NDArray[np.float64]) -> tuple[str, str]:
    """PatientOrientation letters (row direction, column direction), the dominant axis of each."""
    letters = (("R", "L"), ("A", "P"), ("F", "H"))  # LPS: +x is L, +y is P, +z is H

    def letter(direction: npt.NDArray[np.float64]) -> str:
        axis = int(np.argmax(np.abs(direction)))
        return letters[axis][1 if direction[axis] > 0 else 0]

    return letter(affine[:3, 2]), letter(affine[:3, 1])
