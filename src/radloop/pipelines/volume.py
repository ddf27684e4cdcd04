"""DICOM series → :class:`~radloop.pipelines.ports.Volume`.

A series arrives as files: many single-frame instances (CT Image, MR Image, …) or one or more
multi-frame *Enhanced* instances (Enhanced CT/MR Image, Legacy Converted Enhanced …) whose
geometry lives in the Shared and Per-frame Functional Groups Sequences. Either way every frame
becomes one entry of ``Volume.array``; frames are sorted along the slice normal (the cross
product of the two ImageOrientationPatient direction cosines), so the first frame is the one
with the smallest projection of ImagePositionPatient on that normal.

Reading is tolerant (files without a preamble, missing optional attributes, odd VRs; every
transfer syntax that pydicom decodes with pylibjpeg: JPEG 2000, JPEG-LS, JPEG lossless,
RLE, deflate). Geometry is strict: the frames must form one regular grid (same size,
orientation and pixel spacing, distinct positions, uniform slice spacing), otherwise
:class:`~radloop.core.errors.InputDataError` says what is wrong. Assumptions stated here once:

* Stored values become float32 through the Modality LUT's linear form
  (RescaleSlope/RescaleIntercept, per frame for Enhanced objects; 1 and 0 when absent).
* The slice step is measured from the positions, never taken from SliceThickness. For a single
  frame, SpacingBetweenSlices, then SliceThickness, then 1 mm stands in for it.

Speed: each file is opened once. A classic single-frame image (ImagePositionPatient at the top
level) in an uncompressed little-endian transfer syntax is read as groups 0002–0028 (every
attribute used here) plus its pixel data, taken from the end of the file when the last element
there is Pixel Data of exactly the length Rows × Columns × … says; the private groups between
them (most of a Philips header) are never parsed. Files up to 16 MB are read into memory at
once, and an Explicit VR Little Endian one has its groups 0002–0028 walked over those bytes
(:mod:`radloop.pipelines.header_reader`: the data set pydicom's ``read_partial`` would give).
Anything else (compressed, Enhanced, trailing elements) is read whole. Uncompressed
little-endian single frames become arrays straight from the bytes read (``np.frombuffer``, the
unused high bits treated as pydicom's decoder treats them); compressed frames are decoded by
pydicom on a few threads (the codecs are C).
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.pixels.utils import pixel_array as decode_pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from radloop.core.errors import PARSE_ERRORS, InputDataError
from radloop.core.refs import SeriesRef
from radloop.pipelines import headers
from radloop.pipelines.header_reader import read_first_groups
from radloop.pipelines.ports import SourceFrame, Volume

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines still taken as the same orientation."""

POSITION_TOLERANCE_MM = 0.01
"""Positions closer than this along the normal are duplicates; also the absolute slack of
the uniform-spacing check (which adds 1 % of the slice step)."""

SEGMENTATION_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    }
)
"""Objects with pixel data that are results about images, not images to build a volume from."""

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_DECODE_THREADS = min(4, os.cpu_count() or 1)
_WHOLE_FILE_BYTES = 16 << 20
"""Files up to this size are read into memory at once (a classic slice: well under 1 MB)."""


@dataclass(frozen=True)
class _Frame:
    """One 2-D frame with the geometry and scaling read from its header."""

    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    source: SourceFrame
    path: Path
    dataset_index: int
    frame_index: int


def load_volume(paths: Sequence[Path], series: SeriesRef) -> Volume:
    """Read the files of one series and return its frames as a float32 :class:`Volume`.

    ``paths`` may be in any order; frames are sorted along the slice normal. Raises
    :class:`InputDataError` naming the problem when the files are not one decodable image
    series on a regular grid (see the module docstring).
    """
    if not paths:
        raise InputDataError(f"series {series.SeriesInstanceUID}: no files to build a volume from")
    checked: set[Hashable] = set()  # raw values already decoded once in this series
    read = [_read_header(Path(p), checked) for p in paths]
    datasets = [ds for ds, _ in read]
    frames: list[_Frame] = []
    for index, (path, ds) in enumerate(zip(paths, datasets, strict=True)):
        _check_image_object(ds, Path(path), series)
        frames.extend(_frames_of(ds, Path(path), index))
    frame_of_reference_uid = _common_frame_of_reference(datasets, paths)
    _check_same_grid(frames)
    frames = _sort_along_normal(frames)
    step = _slice_step(frames, datasets)
    array = _decode_frames(frames, datasets)
    _hand_headers_to_writers(paths, read)
    return Volume(
        array=array,
        affine=_affine(frames[0], step),
        frame_of_reference_uid=frame_of_reference_uid,
        series=series,
        modality=str(datasets[0].get("Modality", "") or ""),
        source_frames=tuple(f.source for f in frames),
        source_paths=tuple(dict.fromkeys(f.path for f in frames)),
    )


def _hand_headers_to_writers(paths: Sequence[Path], read: Sequence[tuple[Dataset, bool]]) -> None:
    """Leave the headers read as groups 0002-0028 (the fast path) for the result writers."""
    for path, (ds, partial) in zip(paths, read, strict=True):
        if partial:
            del ds.PixelData
            headers.remember(Path(path), ds)


def _read_header(path: Path, checked: set[Hashable] | None = None) -> tuple[Dataset, bool]:
    """Parse ``path`` (tolerantly: no preamble needed), opening it once: groups 0002-0028 and the
    pixel data where the fast path applies (module docstring; then True), else the whole file.

    Every top-level value is decoded now, so that a bad one fails here, by name. ``checked``
    (shared by the files of one series) remembers the raw values that decoded: the slices of a
    series repeat most of their header (patient, study, series, equipment), and a value already
    decoded with the same character set decodes again, so it is left for pydicom to decode when
    (if ever) it is read.
    """
    try:
        with path.open("rb") as fp:
            data = fp.read() if os.fstat(fp.fileno()).st_size <= _WHOLE_FILE_BYTES else None
            fast = read_first_groups(data, fp) if data is not None else None
            if fast is None:
                fp.seek(0)
            ds = fast or read_partial(fp, stop_when=_after_image_pixel_module, force=True)
            partial = _attach_native_pixel_data(ds, io.BytesIO(data) if data is not None else fp)
            if not partial:
                fp.seek(0)
                ds = pydicom.dcmread(fp, force=True)
        _decode_values(ds, set() if checked is None else checked)
        return ds, partial
    except (InvalidDicomError, OSError) + PARSE_ERRORS as e:
        raise InputDataError(f"{path.name}: not a readable DICOM file ({type(e).__name__}: {e})") from e


def _decode_values(ds: Dataset, checked: set[Hashable]) -> None:
    """Decode each top-level value of ``ds`` unless the same raw value (same tag, VR, encoding and
    character set) was decoded before; raises what pydicom raises for a bad one."""
    charset = ds.get_item(0x00080005)
    charset_key = charset.value if isinstance(charset, RawDataElement) else repr(ds.get(0x00080005))
    for raw in list(ds.values()):  # the elements as read: iterating a Dataset would decode them all
        if not isinstance(raw, RawDataElement):
            continue  # parsed already (sequences, pixel data)
        tag = raw.tag
        key = (charset_key, raw.tag, raw.VR, raw.value, raw.is_implicit_VR, raw.is_little_endian)
        if key in checked:
            continue
        ds[tag]  # noqa: B018 - decodes the value (and raises for a bad one)
        checked.add(key)


def _after_image_pixel_module(tag: BaseTag, vr: str | None, length: int) -> bool:
    """Stop after group 0028: the patient, study, series, plane and pixel-module attributes."""
    return tag.group > 0x0028


def _attach_native_pixel_data(ds: Dataset, fp: Any) -> bool:
    """Add the pixel data of a classic single-frame, uncompressed little-endian image from the end
    of ``fp``; False (``ds`` untouched) when the file is not laid out that way."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or "ImagePositionPatient" not in ds:
        return False
    try:
        bits = int(ds.BitsAllocated)
        length = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
    except (AttributeError, TypeError, ValueError):
        return False
    if bits % 8 or length <= 0 or _number_of_frames(ds) != 1:
        return False
    length += length % 2  # values have even length
    explicit = syntax == ExplicitVRLittleEndian
    header_size = 12 if explicit else 8
    size = fp.seek(0, os.SEEK_END)
    if size < length + header_size:
        return False
    fp.seek(size - length - header_size)
    header = fp.read(header_size)
    if header[:4] != _PIXEL_DATA_TAG or struct.unpack("<I", header[-4:])[0] != length:
        return False
    vr = header[4:6].decode("ascii", "replace") if explicit else ("OB" if bits == 8 else "OW")
    if explicit and (vr not in ("OB", "OW") or header[6:8] != b"\0\0"):
        return False
    ds.add_new(0x7FE00010, vr, fp.read(length))
    return True


def _check_image_object(ds: Dataset, path: Path, series: SeriesRef) -> None:
    """Reject objects that cannot be a slice of ``series``: wrong series, no pixels, not an image."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class or not str(ds.get("SOPInstanceUID", "") or ""):
        raise InputDataError(
            f"{path.name}: SOPClassUID or SOPInstanceUID is missing; results could not reference it"
        )
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if series_uid != series.SeriesInstanceUID:
        raise InputDataError(
            f"{path.name}: belongs to series {series_uid or '(none)'}, not {series.SeriesInstanceUID}"
        )
    if sop_class in SEGMENTATION_SOP_CLASSES:
        raise InputDataError(f"{path.name}: a Segmentation ({sop_class}) is not an image to load")
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise InputDataError(f"{path.name}: no pixel data (SOP Class {sop_class} is not an image)")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputDataError(f"{path.name}: Rows or Columns is missing")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputDataError(
            f"{path.name}: SamplesPerPixel is {ds.SamplesPerPixel}; only grayscale images form a volume"
        )


def _frames_of(ds: Dataset, path: Path, dataset_index: int) -> list[_Frame]:
    """The frames of one instance: one for a single-frame image, NumberOfFrames for Enhanced ones."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, path, dataset_index)
    if _number_of_frames(ds) > 1:
        raise InputDataError(
            f"{path.name}: multi-frame object without functional groups (geometry per frame unknown)"
        )
    return [_single_frame(ds, path, dataset_index)]


def _number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or empty."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise InputDataError(f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number") from e


def _single_frame(ds: Dataset, path: Path, dataset_index: int) -> _Frame:
    """Geometry and scaling of a single-frame image (Image Plane and Modality LUT modules)."""
    return _Frame(
        position=_floats(ds, "ImagePositionPatient", 3, path),
        orientation=_floats(ds, "ImageOrientationPatient", 6, path),
        pixel_spacing=_pixel_spacing(ds, path),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=_float_or(ds, "RescaleSlope", 1.0),
        intercept=_float_or(ds, "RescaleIntercept", 0.0),
        source=SourceFrame(str(ds.SOPClassUID), str(ds.SOPInstanceUID)),
        path=path,
        dataset_index=dataset_index,
        frame_index=0,
    )


def _enhanced_frames(ds: Dataset, path: Path, dataset_index: int) -> list[_Frame]:
    """Geometry and scaling of each frame of a multi-frame object with functional groups."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != _number_of_frames(ds):
        raise InputDataError(
            f"{path.name}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items "
            f"but NumberOfFrames is {_number_of_frames(ds)}"
        )
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    return [
        _enhanced_frame(ds, item, shared_item, path, dataset_index, index)
        for index, item in enumerate(per_frame)
    ]


def _enhanced_frame(
    ds: Dataset, item: Dataset, shared: Dataset, path: Path, dataset_index: int, index: int
) -> _Frame:
    """One frame of an Enhanced object; per-frame groups override shared ones."""
    where = f"{path.name} frame {index + 1}"
    position = _group(item, shared, "PlanePositionSequence")
    orientation = _group(item, shared, "PlaneOrientationSequence")
    measures = _group(item, shared, "PixelMeasuresSequence")
    scaling = _group(item, shared, "PixelValueTransformationSequence") or ds
    if position is None or orientation is None or measures is None:
        raise InputDataError(
            f"{where}: PlanePositionSequence, PlaneOrientationSequence or PixelMeasuresSequence "
            "is missing from the functional groups"
        )
    return _Frame(
        position=_floats(position, "ImagePositionPatient", 3, Path(where)),
        orientation=_floats(orientation, "ImageOrientationPatient", 6, Path(where)),
        pixel_spacing=_pixel_spacing(measures, Path(where)),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=_float_or(scaling, "RescaleSlope", 1.0),
        intercept=_float_or(scaling, "RescaleIntercept", 0.0),
        source=SourceFrame(str(ds.SOPClassUID), str(ds.SOPInstanceUID), index + 1),
        path=path,
        dataset_index=dataset_index,
        frame_index=index,
    )


def _group(item: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword``, from the per-frame item or else the shared one."""
    for source in (item, shared):
        sequence = source.get(keyword)
        if sequence:
            first: Dataset = sequence[0]
            return first
    return None


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> npt.NDArray[np.float64]:
    """``count`` numbers from a multi-valued DS attribute; missing or malformed is an input error."""
    value: Any = ds.get(keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError) as e:
        raise InputDataError(f"{path.name}: {keyword} {value!r} is not {count} numbers") from e
    if numbers is None or numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise InputDataError(f"{path.name}: {keyword} is missing or not {count} numbers ({value!r})")
    return numbers


def _pixel_spacing(ds: Dataset, path: Path) -> tuple[float, float]:
    """PixelSpacing as (between rows, between columns) in mm; must be positive."""
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if np.any(spacing <= 0):
        raise InputDataError(f"{path.name}: PixelSpacing {spacing.tolist()} is not positive")
    return float(spacing[0]), float(spacing[1])


def _float_or(ds: Dataset, keyword: str, default: float) -> float:
    """A single numeric attribute, or ``default`` when it is absent, empty or unreadable."""
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        logger.warning("ignoring unreadable %s %r; using %s", keyword, value, default)
        return default


def _common_frame_of_reference(datasets: Sequence[Dataset], paths: Sequence[Path]) -> str:
    """The one FrameOfReferenceUID all instances share (needed to place results in the patient)."""
    uids = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets}
    if "" in uids:
        missing = next(p for p, ds in zip(paths, datasets, strict=True) if not ds.get("FrameOfReferenceUID"))
        raise InputDataError(f"{Path(missing).name}: FrameOfReferenceUID is missing")
    if len(uids) != 1:
        raise InputDataError(f"the series mixes {len(uids)} frames of reference: {sorted(uids)}")
    return uids.pop()


def _check_same_grid(frames: Sequence[_Frame]) -> None:
    """All frames must share size, orientation and pixel spacing to stack into one grid."""
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise InputDataError(
                f"mixed image sizes: {first.path.name} is {first.rows}x{first.columns}, "
                f"{frame.path.name} is {frame.rows}x{frame.columns}"
            )
        if not np.allclose(frame.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise InputDataError(
                f"mixed orientations: {first.path.name} has ImageOrientationPatient "
                f"{first.orientation.tolist()}, {frame.path.name} has {frame.orientation.tolist()}"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise InputDataError(
                f"mixed pixel spacings: {first.path.name} has {first.pixel_spacing}, "
                f"{frame.path.name} has {frame.pixel_spacing}"
            )


def _normal(frame: _Frame) -> npt.NDArray[np.float64]:
    """Unit slice normal: row direction × column direction."""
    normal = np.cross(frame.orientation[:3], frame.orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise InputDataError(f"{frame.path.name}: ImageOrientationPatient directions are parallel")
    return np.asarray(normal / length, dtype=np.float64)


def _sort_along_normal(frames: Sequence[_Frame]) -> list[_Frame]:
    """Frames ordered by position along the normal; two frames at one position are an error."""
    normal = _normal(frames[0])
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if abs(float((after.position - before.position) @ normal)) < POSITION_TOLERANCE_MM:
            raise InputDataError(
                f"duplicate slice position {after.position.tolist()}: {_describe(before)} and "
                f"{_describe(after)} (several echoes, phases or repeats in one series?)"
            )
    return ordered


def _describe(frame: _Frame) -> str:
    """A frame's file name, with its frame number for multi-frame objects."""
    number = frame.source.frame_number
    return frame.path.name if number is None else f"{frame.path.name} frame {number}"


def _slice_step(frames: Sequence[_Frame], datasets: Sequence[Dataset]) -> npt.NDArray[np.float64]:
    """Vector (mm, LPS) from one frame to the next, measured from the positions.

    The positions must advance by the same vector (within 1 % + ``POSITION_TOLERANCE_MM``); a
    missing slice or a variable-spacing acquisition is not a regular grid. A tilted gantry is
    fine: the step need not be parallel to the normal.
    """
    if len(frames) == 1:
        return _normal(frames[0]) * _single_frame_thickness(datasets[frames[0].dataset_index])
    first, last = frames[0].position, frames[-1].position
    step = (last - first) / (len(frames) - 1)
    tolerance = POSITION_TOLERANCE_MM + 0.01 * float(np.linalg.norm(step))
    for k, frame in enumerate(frames):
        error = float(np.linalg.norm(frame.position - (first + k * step)))
        if error > tolerance:
            raise InputDataError(
                f"slice spacing is not uniform: {_describe(frame)} lies {error:.3f} mm off the "
                f"regular grid of step {np.linalg.norm(step):.3f} mm (a missing slice?)"
            )
    return np.asarray(step, dtype=np.float64)


def _single_frame_thickness(ds: Dataset) -> float:
    """Stand-in slice spacing for a one-frame volume (no neighbour to measure against)."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float_or(ds, keyword, 0.0)
        if value > 0:
            return value
    return 1.0


def _affine(first: _Frame, step: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """4×4 matrix mapping (frame, row, column, 1) to LPS mm (see :mod:`radloop.pipelines.ports`)."""
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = step
    affine[:3, 1] = first.orientation[3:] * first.pixel_spacing[0]  # down the rows
    affine[:3, 2] = first.orientation[:3] * first.pixel_spacing[1]  # along a row
    affine[:3, 3] = first.position
    return affine


def _decode_frames(frames: Sequence[_Frame], datasets: Sequence[Dataset]) -> npt.NDArray[np.float32]:
    """Decode each instance once and place its rescaled frames at their sorted index."""
    out = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    targets: dict[int, list[tuple[int, _Frame]]] = {}
    for index, frame in enumerate(frames):
        targets.setdefault(frame.dataset_index, []).append((index, frame))

    def decode(dataset_index: int) -> npt.NDArray[Any]:
        return _decode(datasets[dataset_index], targets[dataset_index][0][1])

    def place(placed: list[tuple[int, _Frame]], stored: npt.NDArray[Any]) -> None:
        for index, frame in placed:
            np.multiply(stored[frame.frame_index], frame.slope, out=out[index], casting="unsafe")
            out[index] += np.float32(frame.intercept)

    native = {i: _native_pixel_array(datasets[i]) for i in targets}
    for dataset_index, stored in native.items():  # uncompressed: a view of the bytes read
        if stored is not None:
            place(targets[dataset_index], stored)
    encoded = [i for i, stored in native.items() if stored is None]
    if not encoded:
        return out
    with ThreadPoolExecutor(max_workers=_DECODE_THREADS, thread_name_prefix="decode") as pool:
        for dataset_index, stored in zip(encoded, pool.map(decode, encoded), strict=True):  # in order
            place(targets[dataset_index], stored)
    return out


def _native_pixel_array(ds: Dataset) -> npt.NDArray[Any] | None:
    """The stored values of an uncompressed little-endian single-frame grayscale image as pydicom's
    ``pixel_array`` gives them (frames, rows, columns), read straight from the bytes; None when
    ``ds`` is anything else (pydicom decodes it then).

    pydicom's native decoder, for these images: the integer type of BitsAllocated and
    PixelRepresentation, little endian, and the bits above BitsStored cleared (unsigned) or
    sign-extended (signed) by a left and a right shift.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or "PixelData" not in ds:
        return None
    try:
        bits = int(ds.BitsAllocated)
        stored_bits = int(ds.BitsStored)
        signed = int(ds.PixelRepresentation)
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if bits not in (8, 16, 32) or not 0 < stored_bits <= bits or signed not in (0, 1) or samples != 1:
        return None
    if _number_of_frames(ds) != 1 or rows <= 0 or columns <= 0:
        return None
    data = ds.PixelData
    length = rows * columns * bits // 8
    if not isinstance(data, bytes) or len(data) not in (length, length + 1):
        return None
    dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
    array = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(1, rows, columns)
    if stored_bits < bits:
        shift = bits - stored_bits
        array = np.right_shift(np.left_shift(array, shift), shift)
    return array


def _decode(ds: Dataset, frame: _Frame) -> npt.NDArray[Any]:
    """All stored frames of ``ds`` as (frames, rows, columns); decoding failures are input errors."""
    try:
        stored = decode_pixel_array(ds)
    except Exception as e:  # pydicom and its plugins raise many types for corrupt or unsupported data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputDataError(
            f"{frame.path.name}: cannot decode pixel data (transfer syntax {syntax}): {e}"
        ) from e
    expected = (_number_of_frames(ds), frame.rows, frame.columns)
    if stored.size != int(np.prod(expected)):
        raise InputDataError(f"{frame.path.name}: decoded {stored.shape} pixels, expected {expected}")
    return stored.reshape(expected)
