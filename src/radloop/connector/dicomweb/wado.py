"""WADO-RS (PS3.18 §10.4) over radloop's own store: instances, metadata, frames and bulk data.

Media types and transfer syntaxes are negotiated from the ``Accept`` header:

* instances (``multipart/related; type="application/dicom"``): as stored with
  ``transfer-syntax=*`` or the stored syntax; Explicit VR Little Endian when no syntax is named
  (PS3.18's default), decompressing if needed;
* frames (``application/octet-stream`` = uncompressed, Explicit VR Little Endian; or the stored
  compressed syntax's own media type, e.g. ``image/jp2``); with ``*/*`` the frames go as stored;
* metadata (``application/dicom+json``): every attribute, large binary values replaced by a
  ``BulkDataURI`` that :func:`bulkdata` serves.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from radloop.connector.dicomweb.multipart import MediaType, parse_accept
from radloop.connector.dicomweb.qido import IndexedInstance
from radloop.connector.dicomweb.reading import check_frames, element_lengths, read_dataset
from radloop.core.errors import NotAcceptableError, NotFoundError, RequestError

log = logging.getLogger(__name__)

ANY = "*"
BULK_THRESHOLD = 1024
INLINE_LIMIT = 1 << 20  # a text or numeric value longer than this goes as bulk data too
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
MEDIA_TYPE_OF_SYNTAX = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


@dataclass(frozen=True)
class Body:
    """One part of a WADO-RS answer: its Content-Type and bytes."""

    content_type: str
    content: bytes


def _stored_syntax(path: Path) -> str:
    return str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)


# --------------------------------------------------------------------------- instances


def instance_syntax(accept: str | None, stored: str) -> str:
    """The transfer syntax to send an instance in, from the Accept header; :class:`NotAcceptableError`."""
    for media in _accepted(accept, "application/dicom"):
        wanted = media.params.get("transfer-syntax", "")
        if media.type not in ("*/*", "application/*", "application/dicom"):
            continue
        if media.type in ("*/*", "application/*") and not wanted:
            return stored
        if wanted in (ANY, stored):
            return stored
        if wanted in ("", str(ExplicitVRLittleEndian)):
            return str(ExplicitVRLittleEndian)
    raise NotAcceptableError(
        f"instances can be sent as application/dicom with transfer-syntax * or {stored} or "
        f"{ExplicitVRLittleEndian}; the request accepts none of them"
    )


def _accepted(accept: str | None, default_type: str) -> list[MediaType]:
    """Accepted single-part media types: ``multipart/related; type=X`` gives X, with its parameters."""
    if not accept or not accept.strip():
        return [MediaType(default_type)]
    out = []
    for media in parse_accept(accept):
        if media.type == "multipart/related":
            inner = media.params.get("type", default_type).lower()
            out.append(MediaType(_ALIASES.get(inner, inner), media.params))
        elif media.type in ("*/*", "multipart/*"):
            out.append(MediaType("*/*", media.params))
        else:
            out.append(media)
    return out


def instance_bodies(instances: list[IndexedInstance], accept: str | None) -> Iterator[Body]:
    """Each instance as a PS3.10 file in the negotiated transfer syntax.

    Negotiation is checked on the first instance before anything is read, so a
    :class:`NotAcceptableError` comes before the answer starts; the files are read lazily.
    """
    if not instances:
        raise NotFoundError("no instances")
    first = instance_syntax(accept, _stored_syntax(instances[0].path))
    return _bodies(instances, accept, first)


def _bodies(instances: list[IndexedInstance], accept: str | None, first_syntax: str) -> Iterator[Body]:
    for i, inst in enumerate(instances):
        stored = _stored_syntax(inst.path)
        syntax = first_syntax if i == 0 else _syntax_or_explicit(accept, stored)
        data = inst.path.read_bytes() if syntax == stored else _transcode(inst.path, syntax)
        yield Body(f"application/dicom; transfer-syntax={syntax}", data)


def _syntax_or_explicit(accept: str | None, stored: str) -> str:
    try:
        return instance_syntax(accept, stored)
    except NotAcceptableError:
        return str(ExplicitVRLittleEndian)


def _transcode(path: Path, syntax: str) -> bytes:
    """The file re-encoded in Explicit VR Little Endian (decompressed if it was compressed;
    a big endian file's words swapped, PS3.5 §7.3)."""
    ds = read_dataset(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        if "PixelData" in ds:
            check_frames(ds, str(ds.get("SOPInstanceUID", path.stem)))  # before decoding anything
        ds.decompress()
    else:
        if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
            to_little_endian(ds)
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


_WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def to_little_endian(ds: Dataset) -> None:
    """Turn a data set read from a big endian file into a little endian one, in place.

    pydicom decodes numeric VRs (US, FL, ...) to numbers, which it encodes again as asked; the
    binary "other" VRs (OW, OL, OF, OD, OV: Pixel Data among them) are raw bytes in the file's
    byte order and are swapped here, word by word.
    """
    for elem in ds.iterall():
        size = _WORD_SIZE.get(elem.VR)
        if size and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            elem.value = np.frombuffer(elem.value, dtype=f">u{size}").astype(f"<u{size}").tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                item.set_original_encoding(False, True, item.original_character_set)


def _swapped_frame(frame: bytes, bits_allocated: int) -> bytes:
    """One native frame of a big endian file in little endian byte order."""
    if bits_allocated <= 8 or bits_allocated % 8:
        return frame
    size = bits_allocated // 8
    return np.frombuffer(frame, dtype=f">u{size}").astype(f"<u{size}").tobytes()


# --------------------------------------------------------------------------- metadata and bulk data


def metadata(instances: list[IndexedInstance], instance_url: Any) -> list[dict[str, Any]]:
    """DICOM JSON of each instance; large top-level values become ``BulkDataURI``s and are never read.

    Binary values over :data:`BULK_THRESHOLD` bytes and any other value over :data:`INLINE_LIMIT`
    (a hostile 1 GB private text) are replaced; their lengths come from the element headers.
    """
    out = []
    for inst in instances:
        ds = read_dataset(inst.path, defer_size=BULK_THRESHOLD)
        bulk = _bulk_elements(ds)
        for tag in bulk:
            del ds[tag]
        item: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 30)
        base = instance_url(inst.study_instance_uid, inst.series_instance_uid, inst.sop_instance_uid)
        for tag, vr in bulk.items():
            item[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{base}/bulkdata/{tag:08X}"}
        out.append(dict(sorted(item.items())))
    return out


def _bulk_elements(ds: Dataset) -> dict[BaseTag, str]:
    """Top-level elements to send as bulk data, with their VRs, judged by their lengths alone."""
    bulk: dict[BaseTag, str] = {}
    for tag, read_vr, length in element_lengths(ds):
        vr = read_vr or _vr_of(ds, tag)
        binary = vr in _BINARY_VRS or vr.startswith("OB or")
        if vr != "SQ" and length > (BULK_THRESHOLD if binary else INLINE_LIMIT):
            bulk[tag] = "OW" if vr.startswith("OB or") else vr
    return bulk


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """The VR of an element read in Implicit VR: from the dictionary (Pixel Data: OW above 8 bits)."""
    if tag == _PIXEL_DATA:
        return "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def bulkdata(inst: IndexedInstance, tag_hex: str) -> list[Body]:
    """The value of one top-level binary attribute; Pixel Data as its frames (PS3.18 §8.7.3)."""
    if len(tag_hex) != 8 or not all(c in "0123456789abcdefABCDEF" for c in tag_hex):
        raise RequestError(f"{tag_hex[:40]!r} is not a tag (8 hex digits)")
    tag = Tag(int(tag_hex, 16))
    if tag == _PIXEL_DATA:
        return frames(inst, "all", "*/*")
    ds = read_dataset(inst.path)
    raw = ds.get_item(tag) if tag in ds else None
    if raw is None or (raw.VR or _vr_of(ds, tag)) == "SQ" or raw.value is None:
        raise NotFoundError(
            f"instance {inst.sop_instance_uid} has no attribute {tag_hex} to send as bulk data"
        )
    value = raw.value if isinstance(raw, RawDataElement) else ds[tag].value
    if not isinstance(value, bytes):
        raise NotFoundError(f"attribute {tag_hex} of instance {inst.sop_instance_uid} is not bulk data")
    return [Body("application/octet-stream", value)]


# --------------------------------------------------------------------------- frames


def frames(inst: IndexedInstance, numbers: str, accept: str | None) -> list[Body]:
    """Frames ``numbers`` (``1,3,5`` or ``all``) of an image instance, as the Accept header asks."""
    ds = read_dataset(inst.path)
    if "PixelData" not in ds:
        raise NotFoundError(f"instance {inst.sop_instance_uid} has no pixel data (it is not an image)")
    count = check_frames(ds, inst.sop_instance_uid)
    wanted = list(range(1, count + 1)) if numbers == "all" else _frame_numbers(numbers, count)
    stored = str(ds.file_meta.TransferSyntaxUID)
    compressed = UID(stored).is_compressed
    native_type = MEDIA_TYPE_OF_SYNTAX.get(stored, "application/octet-stream")
    for media in _accepted(accept, "application/octet-stream"):
        syntax = media.params.get("transfer-syntax", "")
        if compressed and (media.type in ("*/*", native_type)) and syntax in ("", ANY, stored):
            encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [Body(f"{native_type}; transfer-syntax={stored}", encoded[n - 1]) for n in wanted]
        if media.type in ("*/*", "application/octet-stream") and syntax in (
            "",
            ANY,
            str(ExplicitVRLittleEndian),
        ):
            return [
                Body(f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}", f)
                for f in _native_frames(ds, wanted, compressed)
            ]
    raise NotAcceptableError(
        f"frames of this instance can be sent as application/octet-stream (uncompressed)"
        f"{f' or {native_type} ({stored})' if compressed else ''}; the request accepts neither"
    )


def _frame_numbers(numbers: str, count: int) -> list[int]:
    try:
        wanted = [int(n) for n in numbers.split(",") if n.strip()]
    except ValueError as e:
        raise RequestError(f"frame list {numbers!r} must be comma-separated numbers") from e
    bad = [n for n in wanted if not 1 <= n <= count]
    if not wanted or bad:
        raise NotFoundError(f"frames {bad or numbers} do not exist (the instance has {count})")
    return wanted


def _native_frames(ds: Dataset, wanted: list[int], compressed: bool) -> list[bytes]:
    """Uncompressed frame bytes, little endian, as Pixel Data stores them (1-bit frames byte-padded)."""
    if compressed:
        array = ds.pixel_array
        count = int(ds.get("NumberOfFrames", 1) or 1)
        per_frame = array.reshape((count, -1)) if count > 1 else array.reshape((1, -1))
        return [per_frame[n - 1].tobytes() for n in wanted]
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
    data = bytes(ds.PixelData)
    if bits % 8 == 0:
        size = bits // 8
        cut = [data[(n - 1) * size : n * size] for n in wanted]
        if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
            return [_swapped_frame(f, int(ds.BitsAllocated)) for f in cut]
        return cut
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return [np.packbits(unpacked[(n - 1) * bits : n * bits], bitorder="little").tobytes() for n in wanted]
