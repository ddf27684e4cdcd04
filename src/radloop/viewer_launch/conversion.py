"""DICOM ⇄ the viewer's format (NIfTI-1), always on the grid of the source series.

The review app (NiiVue) shows the source series as a NIfTI volume and edits the AI mask as a
NIfTI *drawing*, which NiiVue keeps on the voxel grid of the volume and never resamples. So
the server writes both from one :class:`~radloop.pipelines.ports.Volume`:

* NIfTI voxel ``(i, j, k)`` is DICOM ``(column, row, frame)`` of the volume, stored with ``i``
  fastest, which is exactly the C order of ``Volume.array`` (frames, rows, columns).
* The affine maps ``(i, j, k)`` to RAS millimetres: the volume's LPS affine with its columns
  reordered and the first two rows negated (sform and qform code 1, scanner coordinates).

An uploaded drawing must come back on that grid (same dimensions, same affine within 1 µm),
as unsigned 8-bit labels; it is then the label map of a new SEG (see
:mod:`radloop.feedback.edits`). Intensities are sent as the stored integers with the series'
RescaleSlope/RescaleIntercept in ``scl_slope``/``scl_inter`` when that is exact (half the bytes
of float32), as float32 otherwise.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from radloop.core.errors import InputDataError, RequestError
from radloop.core.geometry import lps_to_ras
from radloop.pipelines.ports import AlgorithmIdentification, Code, Segment, Volume

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
"""An uploaded drawing's affine may differ from the served one by float32 rounding only."""

_NIFTI_HEADER_BYTES = 352  # 348-byte header + 4-byte extension flag


@dataclass(frozen=True)
class SegContent:
    """A SEG read onto a volume's grid: labels (segment numbers), segments and who made them."""

    labels: npt.NDArray[np.uint8]
    segments: tuple[Segment, ...]
    algorithm: AlgorithmIdentification
    series_description: str
    dataset: Dataset


def nifti_affine(volume: Volume) -> npt.NDArray[np.float64]:
    """The RAS affine of the NIfTI form of ``volume`` (voxel (column, row, frame) → mm)."""
    index_to_lps = volume.affine[:, [2, 1, 0, 3]]
    return lps_to_ras(index_to_lps)


def volume_to_nifti(volume: Volume) -> bytes:
    """``volume`` as an uncompressed NIfTI-1 file (stored integers + slope when exact)."""
    stored = _stored_integers(volume)
    if stored is None:
        return _nifti_bytes(volume.array.astype(np.float32, copy=False), nifti_affine(volume))
    values, slope, intercept = stored
    return _nifti_bytes(values, nifti_affine(volume), slope, intercept)


def labels_to_nifti(labels: npt.NDArray[np.integer], volume: Volume) -> bytes:
    """A label array on ``volume``'s grid as a gzipped NIfTI-1 file of uint8 (mostly zeros: small)."""
    if labels.shape != volume.array.shape:
        raise ValueError(f"labels {labels.shape} are not on the volume grid {volume.array.shape}")
    return gzip.compress(_nifti_bytes(labels.astype(np.uint8, copy=False), nifti_affine(volume)), 1)


def _stored_integers(volume: Volume) -> tuple[npt.NDArray[np.integer], float, float] | None:
    """The volume as stored integers with one slope/intercept, if that reproduces it exactly."""
    header = pydicom.dcmread(volume.source_paths[0], stop_before_pixels=True, force=True)
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    if slope == 0:
        return None
    unscaled = (volume.array - np.float32(intercept)) / np.float32(slope)
    values = np.rint(unscaled)
    if float(np.max(np.abs(unscaled - values), initial=0.0)) > 1e-3:
        return None
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    for dtype in (np.int16, np.uint16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype), slope, intercept
    return None


def _nifti_bytes(
    array: npt.NDArray[np.generic],
    affine: npt.NDArray[np.float64],
    slope: float = 1.0,
    intercept: float = 0.0,
) -> bytes:
    """A single-file NIfTI-1 of ``array`` (frames, rows, columns) as (columns, rows, frames)."""
    frames, rows, columns = array.shape
    header = nib.Nifti1Header()  # type: ignore[no-untyped-call]
    header.set_data_dtype(array.dtype)  # type: ignore[no-untyped-call]
    header.set_data_shape((columns, rows, frames))  # type: ignore[no-untyped-call]
    header.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
    header.set_qform(affine, code=1)  # type: ignore[no-untyped-call]
    header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    header["scl_slope"] = slope
    header["scl_inter"] = intercept
    header["vox_offset"] = _NIFTI_HEADER_BYTES
    header["descrip"] = b"radloop review"
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    block: bytes = header.binaryblock
    return block + b"\x00" * 4 + data.tobytes(order="C")


def read_seg(path: Path, volume: Volume) -> SegContent:
    """The SEG at ``path`` as labels on ``volume``'s grid (frames matched by referenced instance/frame)."""
    seg = hd.seg.segread(path)
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    pixels = _seg_pixels(seg, volume, numbers)
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    for index, number in enumerate(numbers):
        labels[pixels[..., index] >= 0.5] = number
    return SegContent(
        labels=labels,
        segments=tuple(_segment(item) for item in seg.SegmentSequence),
        algorithm=_algorithm(seg),
        series_description=str(seg.get("SeriesDescription", "") or ""),
        dataset=seg,
    )


def _seg_pixels(seg: hd.seg.Segmentation, volume: Volume, numbers: list[int]) -> npt.NDArray[np.floating]:
    """(frames, rows, columns, segments) of ``seg`` in volume frame order; frames it omits are empty."""
    frames = volume.source_frames
    try:
        if all(f.frame_number is None for f in frames):
            uids = [f.sop_instance_uid for f in frames]
            pixels = seg.get_pixels_by_source_instance(
                uids,
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
                skip_overlap_checks=True,
                dtype=np.float32,
            )
        else:
            pixels = seg.get_pixels_by_source_frame(
                frames[0].sop_instance_uid,
                [int(f.frame_number or 0) for f in frames],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
                skip_overlap_checks=True,
                dtype=np.float32,
            )
    except (ValueError, KeyError, AttributeError) as e:
        raise InputDataError(
            f"the SEG does not reference the frames of series {volume.series.SeriesInstanceUID}: {e}"
        ) from e
    return np.asarray(pixels)


def _segment(item: Dataset) -> Segment:
    """A :class:`Segment` from one SegmentSequence item."""
    return Segment(
        number=int(item.SegmentNumber),
        label=str(item.get("SegmentLabel", "") or f"Segment {item.SegmentNumber}"),
        category=_code(item.SegmentedPropertyCategoryCodeSequence[0]),
        type=_code(item.SegmentedPropertyTypeCodeSequence[0]),
        tracking_id=str(item.TrackingID) if "TrackingID" in item else None,
    )


def _code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _algorithm(seg: Dataset) -> AlgorithmIdentification:
    """The model that made the SEG: SegmentAlgorithmName and its identification's version."""
    first = seg.SegmentSequence[0]
    name = str(first.get("SegmentAlgorithmName", "") or "")
    identification = first.get("SegmentationAlgorithmIdentificationSequence") or []
    if not identification:
        return AlgorithmIdentification(name=name or "unknown", version="")
    item = identification[0]
    family = item.get("AlgorithmFamilyCodeSequence") or []
    algorithm = AlgorithmIdentification(
        name=str(item.get("AlgorithmName", "") or name or "unknown"),
        version=str(item.get("AlgorithmVersion", "") or ""),
    )
    if family:
        return AlgorithmIdentification(algorithm.name, algorithm.version, _code(family[0]))
    return algorithm


def nifti_to_labels(data: bytes, volume: Volume, allowed: set[int]) -> npt.NDArray[np.uint8]:
    """An uploaded NIfTI drawing as labels (frames, rows, columns) on ``volume``'s grid.

    Raises :class:`RequestError` when it is not a NIfTI-1 file of uint8 on exactly that grid, or
    holds label values other than 0 and ``allowed``.
    """
    raw = _gunzip(data, volume.array.size + 64 * 1024) if data[:2] == b"\x1f\x8b" else data
    try:
        image = nib.Nifti1Image.from_bytes(raw)
    except Exception as e:  # nibabel raises several types for a malformed header
        raise RequestError(f"the edited mask is not a NIfTI-1 file: {e}") from e
    _check_grid(image, volume)
    values = np.asarray(image.dataobj.get_unscaled())  # type: ignore[attr-defined]
    if values.ndim == 4:
        values = values[..., 0]
    if values.dtype != np.uint8:
        raise RequestError(f"the edited mask must hold uint8 labels, not {values.dtype}")
    labels = np.ascontiguousarray(values.transpose(2, 1, 0))
    unknown = set(np.unique(labels).tolist()) - allowed - {0}
    if unknown:
        raise RequestError(f"the edited mask holds labels {sorted(unknown)}; allowed: {sorted(allowed)}")
    return labels


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``, refusing output larger than ``limit`` bytes (a zip bomb)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as e:
        raise RequestError(f"the edited mask is not valid gzip: {e}") from e
    if inflater.unconsumed_tail:
        raise RequestError("the edited mask is larger than the volume it belongs to")
    return out


def _check_grid(image: nib.Nifti1Image, volume: Volume) -> None:
    """The drawing must lie on the volume's grid: same shape, same affine."""
    frames, rows, columns = volume.array.shape
    shape = tuple(int(n) for n in image.shape)
    if shape not in ((columns, rows, frames), (columns, rows, frames, 1)):
        raise RequestError(
            f"the edited mask is {shape}, the volume is {(columns, rows, frames)} (columns, rows, frames)"
        )
    use_sform = int(image.header["sform_code"]) > 0
    affine = image.get_sform() if use_sform else image.get_qform()  # type: ignore[no-untyped-call]
    if not np.allclose(affine, nifti_affine(volume), atol=AFFINE_TOLERANCE_MM):
        raise RequestError("the edited mask is not on the grid of the source series (its affine differs)")
