"""The typed values that flow between operators.

An operator declares its inputs and outputs as port types from this module; a pipeline
is only accepted when every wired output type matches the input type it feeds
(see :mod:`radloop.pipelines.spec`). The types are plain, immutable dataclasses so that a
reader can see what a value carries without running anything.

Geometry convention (used by every operator, and documented in the README):

* ``Volume.array`` has shape ``(frames, rows, columns)``: one entry per source slice (or
  frame of a multi-frame instance), sorted along the slice normal, each slice in DICOM
  row/column order exactly as stored.
* ``Volume.affine`` is a 4×4 matrix mapping an index ``(frame, row, column, 1)`` to patient
  coordinates in millimetres, in the DICOM patient coordinate system (LPS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from radloop.core.refs import SeriesRef


@dataclass(frozen=True)
class Code:
    """A coded concept: (CodeValue, CodingSchemeDesignator, CodeMeaning), e.g. SNOMED CT."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SourceFrame:
    """Which stored instance (and which frame of it, 1-based) a volume slice came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class SeriesInput:
    """A complete series as the store holds it: the pipeline's own input port ``input.series``."""

    ref: SeriesRef
    modality: str
    paths: tuple[Path, ...]
    series_description: str = ""


@dataclass(frozen=True)
class Volume:
    """A 3-D image on a regular grid, with the geometry and provenance of its source series."""

    array: npt.NDArray[np.floating] | npt.NDArray[np.integer]
    affine: npt.NDArray[np.float64]
    frame_of_reference_uid: str
    series: SeriesRef
    modality: str
    source_frames: tuple[SourceFrame, ...]
    source_paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        _check_volume_shape(self.array, len(self.source_frames))
        _check_affine(self.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Spacing in mm along (frame, row, column)."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(cols[0]), float(cols[1]), float(cols[2]))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm³ / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


@dataclass(frozen=True)
class Segment:
    """One segment of a label map: its label value and its coded meaning (SEG Segment Sequence)."""

    number: int
    label: str
    category: Code
    type: Code
    tracking_id: str | None = None


@dataclass(frozen=True)
class AlgorithmIdentification:
    """Who made a label map (SEG Segmentation Algorithm Identification)."""

    name: str
    version: str
    family: Code = field(default_factory=lambda: Code("123110", "DCM", "Artificial Intelligence"))


@dataclass(frozen=True)
class LabelMap:
    """Integer labels on the exact grid of ``reference`` (0 = background)."""

    array: npt.NDArray[np.integer]
    reference: Volume
    segments: tuple[Segment, ...]
    algorithm: AlgorithmIdentification
    flags: tuple[Code, ...] = ()
    """Coded remarks on the result (e.g. outside the plausible range), reported with it in an SR."""

    def __post_init__(self) -> None:
        if self.array.shape != self.reference.array.shape:
            raise ValueError(
                f"LabelMap.array shape {self.array.shape} differs from its reference volume "
                f"{self.reference.array.shape}: labels must lie on the reference grid"
            )
        numbers = [s.number for s in self.segments]
        if len(set(numbers)) != len(numbers) or any(n < 1 for n in numbers):
            raise ValueError(f"LabelMap.segments numbers must be unique and >= 1, got {numbers}")


@dataclass(frozen=True)
class Finding:
    """One output of a classifier: what it looked for, how probable, and its decision if it made one."""

    type: Code
    probability: float
    present: bool | None = None
    site: Code | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding.probability must lie in [0, 1], got {self.probability}")


@dataclass(frozen=True)
class Findings:
    """A classifier's findings about the images of ``reference`` (for an SR measurement report)."""

    items: tuple[Finding, ...]
    reference: Volume
    algorithm: AlgorithmIdentification


@dataclass(frozen=True)
class DicomObjects:
    """DICOM files an operator wrote (results), each ready to deliver."""

    paths: tuple[Path, ...]
    kind: str  # e.g. "SEG", "RTSTRUCT", "SR", "SC"


def _check_volume_shape(array: npt.NDArray[np.generic], n_frames: int) -> None:
    if array.ndim != 3:
        raise ValueError(f"Volume.array must be 3-D (frames, rows, columns), got shape {array.shape}")
    if array.shape[0] != n_frames:
        raise ValueError(f"Volume.array has {array.shape[0]} frames but source_frames names {n_frames}")


def _check_affine(affine: npt.NDArray[np.float64]) -> None:
    if affine.shape != (4, 4):
        raise ValueError(f"Volume.affine must be 4x4, got {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("Volume.affine is singular: zero spacing or parallel axes")


PORT_TYPES: dict[str, type] = {
    "SeriesInput": SeriesInput,
    "Volume": Volume,
    "LabelMap": LabelMap,
    "DicomObjects": DicomObjects,
    "Findings": Findings,
}
