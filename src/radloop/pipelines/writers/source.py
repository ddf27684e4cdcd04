"""What every result writer needs from the source series: its headers and each slice's plane.

A :class:`~radloop.pipelines.ports.Volume` names, for each of its frames, the stored instance (and
frame) it came from. Writers that place something *on* a source slice (RTSTRUCT contours,
secondary-capture images) take that slice's ImagePositionPatient from the source header itself,
not from the volume's affine, so the result sits on the slice exactly even when the scanner's
slice spacing is only nearly uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from radloop.pipelines import headers
from radloop.pipelines.ports import SourceFrame, Volume

PATIENT_AND_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
"""Patient and General Study module attributes a result copies from its source (Type 1/2 ones
always present, written empty when the source lacks them)."""

_TYPE2_PATIENT_AND_STUDY = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)


@dataclass(frozen=True)
class SourceSlice:
    """One frame of the volume as it was stored: instance, frame number, plane position."""

    frame: SourceFrame
    position: npt.NDArray[np.float64]
    header: Dataset


def read_source_header(path: Path, *, full: bool = True) -> Dataset:
    """A source image's header without pixel data and without empty top-level sequences.

    ``full=False`` reads groups 0002-0028 only: every attribute a writer takes from each source
    image (SOP, patient, study, series, equipment, frame of reference, plane and pixel modules)
    lies there (the volume reader has usually read them already), and skipping the private groups
    after them (most of a Philips header) is what makes reading a long series' headers fast.
    Scanners often send Type 3 sequences with zero items (e.g. ProcedureCodeSequence); copied into
    a result they are invalid there (dciodvfy: "Bad Sequence number of Items 0"), so they are
    dropped from this in-memory copy.
    """
    ds: Dataset = (
        pydicom.dcmread(path, stop_before_pixels=True, force=True) if full else read_partial_header(path)
    )
    _drop_empty_sequences(ds)
    return ds


def read_partial_header(path: Path) -> Dataset:
    """Groups 0002-0028 of ``path``: as the volume reader left them (:mod:`radloop.pipelines.
    headers`), else read now."""
    cached = headers.recall(path)
    if cached is not None:
        return cached
    with path.open("rb") as fp:
        return read_partial(fp, stop_when=_after_image_pixel_module, force=True)


def _after_image_pixel_module(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > 0x0028


def _drop_empty_sequences(ds: Dataset) -> None:
    """Delete top-level sequences with no items, decoding only the elements that are sequences."""
    empty = [  # values(): unlike elements(), no sorting and no second look-up of each tag
        e.tag for e in ds.values() if (e.VR or _dictionary_vr(e.tag)) == "SQ" and len(ds[e.tag].value) == 0
    ]
    for tag in empty:
        del ds[tag]


def _dictionary_vr(tag: BaseTag) -> str | None:
    """The VR the data dictionary gives ``tag`` (implicit VR files carry none); None if unknown."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def source_headers(volume: Volume) -> dict[str, Dataset]:
    """The volume's source headers by SOPInstanceUID (the first whole, the others groups 0002-0028:
    see :func:`read_source_header`); :class:`ValueError` if one is missing."""
    paths = volume.source_paths
    headers = {
        str(ds.SOPInstanceUID): ds for ds in (read_source_header(p, full=i == 0) for i, p in enumerate(paths))
    }
    missing = {f.sop_instance_uid for f in volume.source_frames} - headers.keys()
    if missing:
        raise ValueError(f"the volume's source_paths lack the instances {sorted(missing)}")
    return headers


def source_slices(volume: Volume, headers: dict[str, Dataset] | None = None) -> list[SourceSlice]:
    """One :class:`SourceSlice` per volume frame, in volume order."""
    headers = headers if headers is not None else source_headers(volume)
    slices = []
    for frame in volume.source_frames:
        header = headers[frame.sop_instance_uid]
        slices.append(SourceSlice(frame, _frame_position(header, frame), header))
    return slices


def _frame_position(ds: Dataset, frame: SourceFrame) -> npt.NDArray[np.float64]:
    """ImagePositionPatient of a single-frame image, or of frame ``frame_number`` of an Enhanced one."""
    if frame.frame_number is None:
        return np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    item = ds.PerFrameFunctionalGroupsSequence[frame.frame_number - 1]
    position = item.get("PlanePositionSequence") or ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence
    return np.array([float(v) for v in position[0].ImagePositionPatient], dtype=np.float64)


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study attributes of ``source`` into ``target``."""
    for keyword in PATIENT_AND_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
        elif keyword in _TYPE2_PATIENT_AND_STUDY:
            setattr(target, keyword, None)


def slice_positions(volume: Volume) -> npt.NDArray[np.float64]:
    """ImagePositionPatient of every volume frame, shape ``(frames, 3)``, from the source headers."""
    return np.stack([s.position for s in source_slices(volume)])
