"""Reading stored instances for DICOMweb answers with bounded memory.

Instances in the store may predate the receive-time checks (or be hostile in ways those checks
do not see), so every read on behalf of a DICOMweb request is bounded here:

* a Deflated Explicit VR Little Endian data set is inflated at most :data:`MAX_INFLATED_BYTES`
  (pydicom would inflate a 1 KB bomb into gigabytes before looking at a single element);
* headers kept for QIDO-RS answers hold no value larger than :data:`HEADER_VALUE_BYTES` and
  no more than :data:`HEADER_TOTAL_BYTES` in all (:func:`small_header`), so a cache of them
  stays small whatever the files hold;
* :func:`check_frames` compares the frames a header claims with the Pixel Data it has before a
  frame is cut, so a "1,000,000 frames" header with one frame of data fails at once.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from radloop.core.errors import InvalidInstanceError

MAX_INFLATED_BYTES = 1 << 30
HEADER_VALUE_BYTES = 4096
HEADER_TOTAL_BYTES = 64 * 1024
MAX_FRAMES = 100_000
_CHUNK = 1 << 20


def read_dataset(path: Path, *, stop_before_pixels: bool = False, defer_size: int | None = None) -> Dataset:
    """``pydicom.dcmread`` of a stored file, refusing a deflated data set that inflates too far.

    :class:`InvalidInstanceError` names the file's problem (unreadable, or a deflate bomb).
    """
    try:
        with path.open("rb") as f:
            if _is_deflated(f):
                _check_inflated_size(f, path)
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except (InvalidDicomError, ValueError, EOFError, KeyError, zlib.error) as e:
        raise InvalidInstanceError(f"cannot read {path.name}: {type(e).__name__}: {e}") from e


def _is_deflated(f: BinaryIO) -> bool:
    read_preamble(f, force=True)
    meta = _read_file_meta_info(f)
    return str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def _check_inflated_size(f: BinaryIO, path: Path) -> None:
    """Inflate the rest of ``f`` chunk by chunk, counting and discarding, up to the bound."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while chunk := f.read(_CHUNK):
        data = chunk
        while data:
            total += len(inflater.decompress(data, _CHUNK))
            if total > MAX_INFLATED_BYTES:
                raise InvalidInstanceError(
                    f"{path.name}: deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes (refused)"
                )
            data = inflater.unconsumed_tail


def small_header(path: Path) -> Dataset:
    """The header of a stored file without pixel data, without any value over
    :data:`HEADER_VALUE_BYTES` (large values are never read: ``defer_size``, then dropped) and,
    largest first, without values beyond :data:`HEADER_TOTAL_BYTES` in all: what a cache of
    headers holds per file stays bounded whatever the file holds."""
    ds = read_dataset(path, stop_before_pixels=True, defer_size=HEADER_VALUE_BYTES)
    lengths = sorted(element_lengths(ds), key=lambda e: e[2])
    total = 0
    for tag, _vr, length in lengths:
        total += length
        if length > HEADER_VALUE_BYTES or total > HEADER_TOTAL_BYTES:
            del ds[tag]
    return ds


UNDEFINED_LENGTH = 0xFFFFFFFF


def element_lengths(ds: Dataset) -> list[tuple[BaseTag, str | None, int]]:
    """(tag, VR as read or None, value length) of each top-level element, without reading values.

    ``Dataset.get_item`` and ``Dataset.elements`` of pydicom 3 read deferred values, so the
    element table is looked at directly. An undefined length counts as larger than anything.
    """
    out = []
    for tag, elem in ds._dict.items():
        if isinstance(elem, RawDataElement):
            if elem.value is not None:  # read already (small, or an undefined-length sequence)
                length = len(elem.value)
            else:
                length = elem.length if elem.length != UNDEFINED_LENGTH else 1 << 62
            out.append((tag, elem.VR, length))
        else:
            value = elem.value
            length = len(value) if isinstance(value, bytes | str) else 0
            out.append((tag, elem.VR, length))
    return out


def check_frames(ds: Dataset, sop_uid: str) -> int:
    """The number of frames of an image, after checking it against the Pixel Data it has.

    Native pixel data must hold NumberOfFrames × Rows × Columns × SamplesPerPixel × BitsAllocated
    bits (an odd length padded by one byte); encapsulated pixel data must not claim more frames
    than :data:`MAX_FRAMES`. :class:`InvalidInstanceError` names the mismatch.
    """
    try:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise InvalidInstanceError(f"instance {sop_uid}: image attributes unusable ({e})") from e
    if not 1 <= count <= MAX_FRAMES:
        raise InvalidInstanceError(f"instance {sop_uid}: NumberOfFrames {count} is outside 1..{MAX_FRAMES}")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        fragments, _offsets = parse_fragments(ds.PixelData)
        if fragments < count:
            raise InvalidInstanceError(
                f"instance {sop_uid}: NumberOfFrames {count} but the Pixel Data holds {fragments} fragment(s)"
            )
        return count
    expected = (count * rows * cols * samples * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + 1):
        raise InvalidInstanceError(
            f"instance {sop_uid}: NumberOfFrames {count} × {rows}×{cols}×{samples} × {bits} bits "
            f"needs {expected} bytes of Pixel Data, it has {actual}"
        )
    return count
