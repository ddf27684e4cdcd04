"""LabelMap → DICOM Segmentation (SEG) instance, written with highdicom.

The SEG is a new series in the source study: it shares the source's StudyInstanceUID, patient
and FrameOfReferenceUID, and references every source image (single-frame instances, or the
frames of one multi-frame instance) it was derived from. Its frames take their
ImagePositionPatient from the source headers, so they coincide with the source slices exactly.

Segment numbers in a SEG run 1…n. Segments are numbered in the order of their label value
(``Segment.number``), so label values 1…n keep their numbers; label values that no ``Segment``
describes are written as background (and logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

import radloop
from radloop.core.uids import derived_uid
from radloop.pipelines.ports import LabelMap, Segment, SourceFrame
from radloop.pipelines.writers.equipment import add_contributing_equipment, coded_concept
from radloop.pipelines.writers.source import read_partial_header

logger = logging.getLogger(__name__)


def write_seg(
    labelmap: LabelMap,
    out_dir: Path,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    manufacturer: str = "radloop",
    manufacturer_model_name: str = "radloop",
    software_versions: str = radloop.__version__,
    device_serial_number: str = "0",
    fractional: bool = False,
    algorithm_type: str = "AUTOMATIC",
    further_source_images: Sequence[Dataset] = (),
    content_creator_name: str | None = None,
) -> Path:
    """Write ``labelmap`` as a Segmentation instance ``<out_dir>/<sop_instance_uid>.dcm``.

    ``fractional`` writes a FRACTIONAL (PROBABILITY) SEG with values 0 and 1 instead of a BINARY
    one. ``algorithm_type`` is the SegmentAlgorithmType (AUTOMATIC for model output,
    SEMIAUTOMATIC for an edited one, MANUAL drops the algorithm identification). The UIDs come
    from the caller so that a retried job writes the same instance. ``further_source_images``
    are referenced too (per frame where their planes match), e.g. the AI SEG an edited SEG was
    derived from; ``content_creator_name`` names the person who made the content. Unless the
    SEG is MANUAL, the label map's algorithm is named in the Contributing Equipment Sequence
    (IHE AIR, :mod:`radloop.pipelines.writers.equipment`). Returns the file's path.
    """
    if not labelmap.segments:
        raise ValueError("write_seg: labelmap has no segments to write")
    segments = sorted(labelmap.segments, key=lambda s: s.number)
    source_images, frame_order = _source_images(labelmap)
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=_seg_label_array(labelmap.array, segments)[frame_order],
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=_segment_descriptions(labelmap, segments, algorithm_type),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=software_versions,
        device_serial_number=device_serial_number,
        series_description=series_description,
        content_description=series_description[:64] or None,
        further_source_images=list(further_source_images) or None,
        content_creator_name=content_creator_name,
    )
    if algorithm_type != "MANUAL":  # AIR: the algorithm that made (or proposed) the segments
        add_contributing_equipment(seg, labelmap.algorithm, manufacturer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sop_instance_uid}.dcm"
    seg.save_as(path)
    logger.info("wrote SEG %s with %d segments, %d frames", path.name, len(segments), seg.NumberOfFrames)
    return path


def _seg_label_array(
    labels: npt.NDArray[np.integer], segments: Sequence[Segment]
) -> npt.NDArray[np.unsignedinteger]:
    """Labels renumbered to SEG segment numbers 1…n (the position in ``segments``); others → 0."""
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    top = max(s.number for s in segments)
    lut = np.zeros(top + 1, dtype=dtype)
    for seg_number, segment in enumerate(segments, start=1):
        lut[segment.number] = seg_number
    numbers = {s.number for s in segments}
    lowest, highest = int(labels.min(initial=0)), int(labels.max(initial=0))
    if lowest >= 0 and highest <= top and numbers.issuperset(range(1, highest + 1)):
        # every value present is 0 or described (e.g. a 0/1 mask): nothing to warn about, and one
        # gather, or only a cast where the label values are their SEG numbers already
        if np.array_equal(lut[: highest + 1], np.arange(highest + 1)):
            return labels.astype(dtype)
        return np.take(lut, labels)
    inside = (labels >= 0) & (labels <= top)
    out = np.zeros(labels.shape, dtype=dtype)
    out[inside] = lut[labels[inside]]
    undescribed = np.setdiff1d(np.unique(labels[labels != 0]), [s.number for s in segments])
    if undescribed.size:
        logger.warning("label values %s have no Segment; written as background", undescribed.tolist())
    return out


def _segment_descriptions(
    labelmap: LabelMap, segments: Sequence[Segment], algorithm_type: str
) -> list[hd.seg.SegmentDescription]:
    """SegmentSequence items: label, coded category/type, algorithm, optional tracking ids."""
    algorithm = labelmap.algorithm
    identification = (
        None
        if algorithm_type == "MANUAL"
        else hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=coded_concept(algorithm.family), version=algorithm.version
        )
    )
    study_uid = labelmap.reference.series.StudyInstanceUID
    return [
        hd.seg.SegmentDescription(
            segment_number=seg_number,
            segment_label=segment.label,
            segmented_property_category=coded_concept(segment.category),
            segmented_property_type=coded_concept(segment.type),
            algorithm_type=algorithm_type,
            algorithm_identification=identification,
            tracking_id=segment.tracking_id,
            tracking_uid=(
                derived_uid("segment-tracking", study_uid, segment.tracking_id)
                if segment.tracking_id
                else None
            ),
        )
        for seg_number, segment in enumerate(segments, start=1)
    ]


def _source_images(labelmap: LabelMap) -> tuple[list[Dataset], list[int]]:
    """Source headers for highdicom, and the volume frame index for each SEG input frame.

    Single-frame sources are passed in volume frame order. A multi-frame source is passed once,
    and the volume frames are reordered to its stored frame order (highdicom pairs input frame
    ``i`` with source frame ``i + 1``).
    """
    volume = labelmap.reference
    paths = volume.source_paths
    headers = {
        str(ds.SOPInstanceUID): ds
        for ds in (_read_source_header(p, full=i == 0 or len(paths) == 1) for i, p in enumerate(paths))
    }
    frames = volume.source_frames
    missing = {f.sop_instance_uid for f in frames} - headers.keys()
    if missing:
        raise ValueError(f"write_seg: source_paths lack the instances {sorted(missing)}")
    if all(f.frame_number is None for f in frames):
        return [headers[f.sop_instance_uid] for f in frames], list(range(len(frames)))
    return _multi_frame_source(frames, headers)


def _read_source_header(path: Path, *, full: bool) -> Dataset:
    """A source image's header (whole if ``full``, else the attributes highdicom reads per image),
    without empty top-level sequences.

    highdicom copies the Patient and Study modules from the source; scanners often send Type 3
    sequences with zero items (e.g. ProcedureCodeSequence), which are invalid in the SEG
    (dciodvfy: "Bad Sequence number of Items 0"), so they are dropped from this in-memory copy.
    Only sequence elements are decoded to find them (``Dataset.values`` leaves the rest raw, and
    unlike ``Dataset.elements`` neither sorts the tags nor looks each one up again).
    """
    # every attribute highdicom reads per image but the first lies in groups 0008-0028; skipping
    # the private groups after them (seconds of nested sequences on a 170-slice Philips series)
    # is what makes the SEG writer fast, and the volume reader has usually read them already
    ds: Dataset = (
        pydicom.dcmread(path, stop_before_pixels=True, force=True) if full else read_partial_header(path)
    )
    empty = [e.tag for e in ds.values() if e.VR == "SQ" and len(ds[e.tag].value) == 0]
    for tag in empty:
        del ds[tag]
    return ds


def _multi_frame_source(
    frames: Sequence[SourceFrame], headers: dict[str, Dataset]
) -> tuple[list[Dataset], list[int]]:
    """The one multi-frame source image and the volume index of each of its stored frames."""
    instances = {f.sop_instance_uid for f in frames}
    if len(instances) != 1 or any(f.frame_number is None for f in frames):
        raise ValueError(
            "write_seg: a SEG can reference either single-frame images or one multi-frame image; "
            f"this volume mixes {len(instances)} instances"
        )
    source = headers[instances.pop()]
    numbers = [f.frame_number for f in frames]
    if sorted(n for n in numbers if n is not None) != list(range(1, int(source.NumberOfFrames) + 1)):
        raise ValueError("write_seg: the volume does not hold every frame of its multi-frame source once")
    order = sorted(range(len(frames)), key=lambda i: numbers[i] or 0)
    return [source], order
