"""A side-by-side Secondary Capture: the current study's mask next to the prior's, for PACSs that
show nothing but images.

One *Secondary Capture Image Storage* instance (RGB, 8 bit) in the current study: the middle
labelled slice of the current volume (left) and of the prior volume (right), each windowed and
with its segment outlines, legend and the "NOT FOR DIAGNOSIS" banner burned in exactly as
:mod:`.secondary_capture` draws them, captioned with each study's StudyDate. The image lies in no
patient plane (two studies side by side), so it carries no plane attributes, only the
PatientOrientation of the current slice; its Source Image Sequence names both source slices (one
in each study).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from radloop.core.uids import derived_uid
from radloop.pipelines.ports import LabelMap
from radloop.pipelines.writers.secondary_capture import (
    CaptureSeries,
    Rgb,
    display_window,
    patient_orientation,
    render_slice,
)
from radloop.pipelines.writers.source import SourceSlice, source_slices

logger = logging.getLogger(__name__)
GAP_PIXELS = 8
CAPTION_PIXELS = 18


def write_comparison_capture(
    current: LabelMap, prior: LabelMap, out_dir: Path, series: CaptureSeries
) -> Path:
    """Write the side-by-side image of ``current`` and ``prior`` as ``<out_dir>/<SOPInstanceUID>.dcm``."""
    panels, sources = [], []
    for labelmap, caption in ((current, "current"), (prior, "prior")):
        source, rgb = _middle_slice(labelmap)
        panels.append(_captioned(rgb, f"{caption} {source.header.get('StudyDate', '')}"))
        sources.append(source)
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP_PIXELS
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[: panels[0].shape[0], : panels[0].shape[1]] = panels[0]
    canvas[: panels[1].shape[0], panels[0].shape[1] + GAP_PIXELS :] = panels[1]
    sop_uid = derived_uid(series.series_instance_uid, "comparison")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=sources[0].header,
        pixel_array=canvas,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=patient_orientation(current.reference.affine),
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=series.manufacturer,
        series_description=series.series_description[:64],
    )
    _describe_derivation(sc, sources, current)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sop_uid}.dcm"
    sc.save_as(path)
    logger.info("wrote the side-by-side capture %s", path.name)
    return path


def _middle_slice(labelmap: LabelMap) -> tuple[SourceSlice, Rgb]:
    """The middle slice holding a segment (the middle slice if none does), rendered."""
    segments = sorted(labelmap.segments, key=lambda s: s.number)
    labelled = np.flatnonzero(np.isin(labelmap.array, [s.number for s in segments]).any(axis=(1, 2)))
    index = int(labelled[len(labelled) // 2]) if labelled.size else labelmap.array.shape[0] // 2
    sources = source_slices(labelmap.reference)
    window = display_window(labelmap.reference, sources[0].header)
    algorithm = f"AI: {labelmap.algorithm.name} {labelmap.algorithm.version}"
    rgb = render_slice(labelmap.reference.array[index], labelmap.array[index], segments, window, algorithm)
    return sources[index], rgb


def _captioned(rgb: Rgb, caption: str) -> Rgb:
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + CAPTION_PIXELS))
    canvas.paste(Image.fromarray(rgb), (0, CAPTION_PIXELS))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), caption, fill=(255, 255, 255), font=ImageFont.load_default(size=CAPTION_PIXELS - 4))
    return np.asarray(canvas, dtype=np.uint8)


def _describe_derivation(sc: Dataset, sources: list[SourceSlice], current: LabelMap) -> None:
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = sources[0].header.get("Laterality") or None  # Type 2C; empty = unpaired part
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    algorithm = current.algorithm
    sc.DerivationDescription = (
        f"A slice of the current and of the prior study side by side, each with the outline of an "
        f"automatic segmentation ({algorithm.name} {algorithm.version}) burned in; not for diagnosis"
    )[:1024]
    references = []
    for source in sources:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.frame.sop_class_uid
        reference.ReferencedSOPInstanceUID = source.frame.sop_instance_uid
        if source.frame.frame_number is not None:
            reference.ReferencedFrameNumber = source.frame.frame_number
        references.append(reference)
    sc.SourceImageSequence = DicomSequence(references)
