"""SEG → label array on the source volume's grid, and the dataset's table of label values.

A SEG written by a pipeline numbers its segments 1…n (see :mod:`radloop.pipelines.writers.seg`);
those numbers are the label values of the dataset, and the segment labels its label names
("background" is 0). All AI SEGs of one export must describe the same segments. An edited SEG
may number its segments differently: each of its segments is matched to the dataset's by the
coded segmented property type (then by label), and its mask renumbered accordingly.

Masks are read frame by frame through the source images the SEG references (highdicom's
``get_pixels_by_source_instance`` / ``…_by_source_frame``), so they lie on the source grid by
construction; a SEG that does not reference every image of the series is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt

from radloop.core.errors import ExportError
from radloop.feedback.agreement import dice
from radloop.pipelines.ports import Volume

BACKGROUND = "background"


@dataclass(frozen=True)
class DatasetLabel:
    """One label value of the dataset: its value, name and coded segmented property type."""

    value: int
    name: str
    scheme: str
    code: str
    meaning: str

    def __post_init__(self) -> None:
        if self.value < 1:
            raise ValueError(f"DatasetLabel.value must be >= 1 (0 is background), got {self.value}")
        if not self.name or self.name.lower() == BACKGROUND:
            raise ValueError(f"DatasetLabel.name {self.name!r} must be non-empty and not {BACKGROUND!r}")

    def to_json(self) -> dict[str, Any]:
        """The label as stored in the export state."""
        return {
            "value": self.value,
            "name": self.name,
            "scheme": self.scheme,
            "code": self.code,
            "meaning": self.meaning,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetLabel:
        """Inverse of :meth:`to_json`."""
        return cls(
            int(data["value"]),
            str(data["name"]),
            str(data["scheme"]),
            str(data["code"]),
            str(data["meaning"]),
        )

    def same_concept(self, other: DatasetLabel) -> bool:
        """Same segmented property type (scheme and code), or, failing codes, the same name."""
        if self.code and other.code:
            return (self.scheme, self.code) == (other.scheme, other.code)
        return self.name == other.name


@dataclass(frozen=True)
class SegMask:
    """A SEG read onto a volume grid: segment numbers per voxel, and what each number means."""

    array: npt.NDArray[np.uint16]
    segments: tuple[DatasetLabel, ...]
    algorithm_name: str
    algorithm_version: str


def read_seg(path: Path, volume: Volume) -> SegMask:
    """Read the SEG at ``path`` onto ``volume``'s (frame, row, column) grid.

    Raises :class:`ExportError` when the file is not a SEG of this series' images, or when its
    segments overlap (a label map holds one label per voxel).
    """
    try:
        seg = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ExportError(f"{path.name}: not a readable Segmentation ({e})") from e
    if str(seg.FrameOfReferenceUID) != volume.frame_of_reference_uid:
        raise ExportError(f"{path.name}: the SEG lies in another frame of reference than its source series")
    segments = _segments(seg, path)
    try:
        array = _pixels_on_volume(seg, volume)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ExportError(f"{path.name}: cannot place the SEG on its source images ({e})") from e
    name, version = _algorithm(seg)
    return SegMask(array.astype(np.uint16), segments, name, version)


def _pixels_on_volume(seg: hd.seg.Segmentation, volume: Volume) -> npt.NDArray[Any]:
    """Segment numbers per voxel, one SEG frame per volume frame (empty where the SEG has none)."""
    frames = volume.source_frames
    if frames[0].frame_number is None:
        return np.asarray(
            seg.get_pixels_by_source_instance(
                [f.sop_instance_uid for f in frames],
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )
        )
    return np.asarray(
        seg.get_pixels_by_source_frame(
            frames[0].sop_instance_uid,
            [f.frame_number or 0 for f in frames],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    )


def _segments(seg: hd.seg.Segmentation, path: Path) -> tuple[DatasetLabel, ...]:
    """The SEG's segments as labels (number, label, segmented property type)."""
    out = []
    for item in seg.SegmentSequence:
        prop = (
            item.SegmentedPropertyTypeCodeSequence[0] if "SegmentedPropertyTypeCodeSequence" in item else None
        )
        name = str(item.get("SegmentLabel", "") or "").strip() or f"segment-{int(item.SegmentNumber)}"
        out.append(
            DatasetLabel(
                value=int(item.SegmentNumber),
                name=name,
                scheme=str(prop.CodingSchemeDesignator) if prop is not None else "",
                code=str(prop.CodeValue) if prop is not None else "",
                meaning=str(prop.CodeMeaning) if prop is not None else "",
            )
        )
    if not out:
        raise ExportError(f"{path.name}: the SEG has no segments")
    return tuple(sorted(out, key=lambda label: label.value))


def _algorithm(seg: hd.seg.Segmentation) -> tuple[str, str]:
    """Name and version of the algorithm of the first segment that names one, else empty strings."""
    for item in seg.SegmentSequence:
        if "SegmentationAlgorithmIdentificationSequence" in item:
            algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
            return str(algorithm.get("AlgorithmName", "")), str(algorithm.get("AlgorithmVersion", ""))
    return "", ""


def check_labels(table: Sequence[DatasetLabel], segments: Sequence[DatasetLabel], where: str) -> None:
    """An AI SEG must describe the dataset's labels: same numbers, same concepts."""
    known = {label.value: label for label in table}
    for segment in segments:
        expected = known.get(segment.value)
        if expected is None or not expected.same_concept(segment):
            raise ExportError(
                f"{where}: segment {segment.value} ({segment.name}) is not the dataset's label "
                f"{segment.value} ({expected.name if expected else 'none'}): one export, one set of labels"
            )


def to_dataset_values(mask: SegMask, table: Sequence[DatasetLabel], where: str) -> npt.NDArray[np.uint16]:
    """``mask`` renumbered to the dataset's label values, matching segments by concept."""
    lut = np.zeros(max(s.value for s in mask.segments) + 1, dtype=np.uint16)
    for segment in mask.segments:
        match = next((label for label in table if label.same_concept(segment)), None)
        if match is None:
            raise ExportError(
                f"{where}: segment {segment.name!r} of the edited SEG is none of the dataset's labels"
            )
        lut[segment.value] = match.value
    return lut[np.minimum(mask.array, lut.size - 1)]


def agreement(ai: npt.NDArray[Any], final: npt.NDArray[Any], table: Sequence[DatasetLabel]) -> dict[str, Any]:
    """Dice between the AI and the final label arrays: foreground (as the review app has it), per label."""
    return {
        "dice": round(dice(ai > 0, final > 0), 6),
        "dice_per_label": {
            label.name: round(dice(ai == label.value, final == label.value), 6) for label in table
        },
    }
