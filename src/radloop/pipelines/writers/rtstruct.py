"""LabelMap → DICOM RT Structure Set (RTSTRUCT), built module by module after PS3.3 A.19.

Why not a library: rt-utils 1.2.7 (the last release, January 2023) writes objects that fail
dciodvfy (DS values longer than 16 characters, no FrameOfReferenceUID, missing Type 2
attributes), and it pulls in the GUI build of OpenCV and the ``dataclasses`` back-port.
highdicom has no RTSTRUCT class. So this module builds the IOD itself, one function per
module (Patient, General Study, RT Series, Frame of Reference, General Equipment, Structure
Set, ROI Contour, RT ROI Observations, SOP Common), and checks its arguments first.

Contours: one ROI per segment of the label map (ROINumber = the label value). On every source
slice that holds the label, the mask's outline is traced with marching squares (contourpy) at
the 0.5 level, i.e. half-way between inside and outside pixel centres, so a reader that fills
each contour (even-odd rule, pixel centres inside) gets the mask back. Holes are written as
further contours inside the outer one (the even-odd convention most readers follow). Points on
straight runs are dropped (exactly: only collinear points go). Each contour lies in its source
slice's plane, at that slice's ImagePositionPatient, and names that image in its Contour Image
Sequence.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from pathlib import Path

import contourpy
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, RTStructureSetStorage

import radloop
from radloop.pipelines.ports import LabelMap, Segment, Volume
from radloop.pipelines.writers.colours import segment_colour
from radloop.pipelines.writers.equipment import add_contributing_equipment, code_item
from radloop.pipelines.writers.source import (
    SourceSlice,
    copy_patient_and_study,
    source_headers,
    source_slices,
)

logger = logging.getLogger(__name__)

DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
"""ReferencedSOPClassUID of an RT Referenced Study Sequence item (the value PS3.3 C.8.8.5 names)."""

ANATOMICAL_STRUCTURE_CODES = frozenset({"91723000", "123037004"})
"""Segments of category 'Anatomical Structure' are RTROIInterpretedType ORGAN: SNOMED CT 91723000,
the code of CID 7150 that radloop writes, or 123037004 ('Body structure'), which others send."""

Contour = npt.NDArray[np.float64]
"""Points of one closed contour, shape (n, 2), as (row, column) pixel indices."""


def write_rtstruct(
    labelmap: LabelMap,
    out_dir: Path,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    structure_set_label: str = "AI",
    manufacturer: str = "radloop",
) -> Path:
    """Write ``labelmap`` as RT Structure Set ``<out_dir>/<sop_instance_uid>.dcm``; returns its path.

    The structure set is a new series in the source study, in the source's Frame of Reference,
    and references every source image. UIDs come from the caller (stable across retries). The
    label map's algorithm is named in the Contributing Equipment Sequence (IHE AIR).
    """
    _check_labelmap(labelmap)
    _check_label(structure_set_label)
    headers = source_headers(labelmap.reference)
    slices = source_slices(labelmap.reference, headers)
    first = headers[labelmap.reference.source_frames[0].sop_instance_uid]
    ds = _file_dataset(sop_instance_uid)
    _patient_and_study(ds, first)
    _rt_series(ds, series_instance_uid, series_number, series_description)
    _frame_of_reference(ds, labelmap.reference, first)
    _general_equipment(ds, manufacturer)
    segments = sorted(labelmap.segments, key=lambda s: s.number)
    _structure_set(ds, labelmap, segments, slices, structure_set_label)
    _roi_contours(ds, labelmap, segments, slices)
    _rt_roi_observations(ds, segments)
    add_contributing_equipment(ds, labelmap.algorithm, manufacturer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sop_instance_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.info(
        "wrote RTSTRUCT %s: %d ROIs, %d contours",
        path.name,
        len(segments),
        sum(len(item.get("ContourSequence", [])) for item in ds.ROIContourSequence),
    )
    return path


def _check_labelmap(labelmap: LabelMap) -> None:
    if not labelmap.segments:
        raise ValueError("write_rtstruct: labelmap has no segments to write")


def _check_label(label: str) -> None:
    if not 1 <= len(label) <= 64 or "\\" in label:
        raise ValueError(f"write_rtstruct: structure_set_label {label!r} must be 1-64 characters, no '\\'")


def _file_dataset(sop_instance_uid: str) -> Dataset:
    """An empty data set with the File Meta Information and SOP Common module."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_instance_uid
    now = datetime.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return ds


def _patient_and_study(ds: Dataset, source: Dataset) -> None:
    """Patient and General Study modules (and the character set) copied from the source."""
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    copy_patient_and_study(source, ds)


def _rt_series(ds: Dataset, series_uid: str, number: int, description: str) -> None:
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description[:64]
    ds.OperatorsName = None
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime


def _frame_of_reference(ds: Dataset, volume: Volume, source: Dataset) -> None:
    ds.FrameOfReferenceUID = volume.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", None) or None


def _general_equipment(ds: Dataset, manufacturer: str) -> None:
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "radloop"
    ds.SoftwareVersions = radloop.__version__


def _structure_set(
    ds: Dataset, labelmap: LabelMap, segments: Sequence[Segment], slices: Sequence[SourceSlice], label: str
) -> None:
    """Structure Set module: the referenced frame of reference, study, series, images; the ROIs."""
    volume = labelmap.reference
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.InstanceNumber = 1
    series = Dataset()
    series.SeriesInstanceUID = volume.series.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_reference(s) for s in slices])
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = volume.series.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame_of_reference = Dataset()
    frame_of_reference.FrameOfReferenceUID = volume.frame_of_reference_uid
    frame_of_reference.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_of_reference])
    algorithm = labelmap.algorithm
    ds.StructureSetROISequence = DicomSequence(
        [
            _structure_set_roi(
                segment, volume.frame_of_reference_uid, f"{algorithm.name} {algorithm.version}"
            )
            for segment in segments
        ]
    )


def _structure_set_roi(segment: Segment, frame_of_reference_uid: str, algorithm: str) -> Dataset:
    item = Dataset()
    item.ROINumber = segment.number
    item.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    item.ROIName = segment.label[:64]
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = algorithm[:64]
    return item


def _image_reference(source: SourceSlice) -> Dataset:
    """A Contour Image Sequence item naming one source image (and frame, for a multi-frame one)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.frame.sop_class_uid
    item.ReferencedSOPInstanceUID = source.frame.sop_instance_uid
    if source.frame.frame_number is not None:
        item.ReferencedFrameNumber = source.frame.frame_number
    return item


def _roi_contours(
    ds: Dataset, labelmap: LabelMap, segments: Sequence[Segment], slices: Sequence[SourceSlice]
) -> None:
    """ROI Contour module: for each ROI, a colour and its contours on every slice that holds it."""
    in_plane = labelmap.reference.affine[:3, 1:3]  # (row step, column step) in LPS mm
    items = []
    for position, segment in enumerate(segments):
        item = Dataset()
        item.ReferencedROINumber = segment.number
        item.ROIDisplayColor = list(segment_colour(position))
        contours: list[Dataset] = []
        for index, source in enumerate(slices):
            mask = labelmap.array[index] == segment.number
            if not mask.any():
                continue
            for contour in trace_contours(mask):
                points = source.position + contour @ in_plane.T
                contours.append(_contour_item(points, source, len(contours) + 1))
        if contours:
            item.ContourSequence = DicomSequence(contours)
        else:
            logger.info("segment %r is empty: ROI %d has no contours", segment.label, segment.number)
        items.append(item)
    ds.ROIContourSequence = DicomSequence(items)


def _contour_item(points: npt.NDArray[np.float64], source: SourceSlice, number: int) -> Dataset:
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_image_reference(source)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourNumber = number
    item.ContourData = [_ds_value(v) for v in points.ravel()]
    return item


def _ds_value(value: float) -> str:
    """A coordinate as a Decimal String of at most 16 characters (0.0001 mm resolution)."""
    text = f"{round(float(value), 4) + 0.0:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _rt_roi_observations(ds: Dataset, segments: Sequence[Segment]) -> None:
    """RT ROI Observations module: one observation per ROI, with the segment's coded type."""
    items = []
    for number, segment in enumerate(segments, start=1):
        item = Dataset()
        item.ObservationNumber = number
        item.ReferencedROINumber = segment.number
        item.RTROIInterpretedType = "ORGAN" if segment.category.value in ANATOMICAL_STRUCTURE_CODES else None
        item.ROIInterpreter = None
        item.RTROIIdentificationCodeSequence = DicomSequence([code_item(segment.type)])
        items.append(item)
    ds.RTROIObservationsSequence = DicomSequence(items)


def trace_contours(mask: npt.NDArray[np.bool_]) -> list[Contour]:
    """Closed outlines of a 2-D mask (outer boundaries and holes), as (row, column) points.

    Marching squares at level 0.5 on the mask padded with background, so every outline closes;
    the repeated closing point and collinear points are dropped.
    """
    padded = np.pad(mask.astype(np.float32), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    contours: list[Contour] = []
    for line in generator.lines(0.5):
        xy = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # closed: last point repeats the first
        points = _drop_collinear(xy[:, ::-1])  # (x, y) = (column, row) → (row, column)
        if len(points) >= 3:
            contours.append(points)
    return contours


def _drop_collinear(points: Contour) -> Contour:
    """The polygon without vertices that lie on the straight line between their neighbours."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[np.abs(cross) > 1e-9]
