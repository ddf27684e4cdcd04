"""Input sanity before acknowledgement: every received data set is walked once, within limits.

Everything a sender controls (element lengths, nesting, NumberOfFrames, Rows, Columns, the size of
an inflated data set) is checked against the bytes actually received before it can drive memory or
CPU. The C-STORE SCP and STOW-RS both call :func:`check_instance` (or :func:`check_part10`) before
they store anything; a refusal raises an :class:`~radloop.core.errors.InvalidInstanceError` whose
``rule`` names the check, turned into a DIMSE status or an HTTP problem at the edge.

The walk is strict where the standard is (PS3.5 §7: elements in ascending tag order, defined lengths
inside the data set, undefined lengths only for sequences, items and encapsulated Pixel Data, every
undefined length closed by its delimiter) and tolerant where real scanners are not: excess padding
after native Pixel Data is accepted (pydicom accepts it too); only *missing* pixel data is refused.

Deflated data sets (Deflated Explicit VR Little Endian) are inflated incrementally, a chunk at a
time, and the walk stops as soon as the inflated size passes ``max_instance_bytes``: a "deflate
bomb" costs one chunk of memory, never its inflated size.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from radloop.connector.peer_text import shown
from radloop.core.errors import PARSE_ERRORS, InvalidInstanceError
from radloop.core.settings import DicomSettings

__all__ = [
    "InconsistentInstanceError",
    "InstanceLimitError",
    "InstanceLimits",
    "check_instance",
    "check_part10",
    "inflate_bounded",
]

_CHUNK = 1 << 20  # inflate and skip in 1 MiB steps
_MAX_DEPTH = 16  # nested sequences; real objects rarely pass 5
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
_PIXEL_GROUP_START = 0x7FE00000
# Top-level elements whose values the pixel rules need (small: read, never skipped).
_ROWS, _COLUMNS, _FRAMES = 0x00280010, 0x00280011, 0x00280008
_SAMPLES, _BITS_ALLOCATED, _PHOTOMETRIC = 0x00280002, 0x00280100, 0x00280004
_WANTED = {_ROWS, _COLUMNS, _FRAMES, _SAMPLES, _BITS_ALLOCATED, _PHOTOMETRIC}
_MAX_WANTED_LENGTH = 64
# Encapsulated transfer syntaxes where one fragment stream carries every frame (PS3.5 §8.2.5-8.2.8).
_VIDEO_PREFIXES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.4.9")


class InstanceLimitError(InvalidInstanceError):
    """The data set exceeds a configured limit (size, frames, rows, columns): DIMSE 0xA700."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class InconsistentInstanceError(InvalidInstanceError):
    """The data set contradicts itself or its IOD (e.g. Pixel Data shorter than Rows × Columns × …):
    DIMSE 0xA900 (Data Set does not match SOP Class)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class MalformedInstanceError(InvalidInstanceError):
    """The encoding cannot be walked (lengths past the end, unclosed sequences): DIMSE 0xC000."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class InstanceLimits:
    """The bounds a received instance must stay within (``dicom.max_*`` settings)."""

    max_instance_bytes: int = 512 << 20
    max_frames: int = 50_000
    max_rows: int = 65_535
    max_columns: int = 65_535

    @classmethod
    def from_settings(cls, dicom: DicomSettings) -> InstanceLimits:
        """The limits configured in ``dicom.max_*``."""
        return cls(dicom.max_instance_bytes, dicom.max_frames, dicom.max_rows, dicom.max_columns)


# -- readers: forward-only byte sources ---------------------------------------------------------
class _Reader(Protocol):
    position: int

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> None: ...

    def at_end(self) -> bool: ...


class _BytesReader:
    """A forward-only view of bytes already in memory."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self.position = 0

    def read(self, n: int) -> bytes:
        if n > len(self._data) - self.position:
            raise EOFError(n)
        out = bytes(self._data[self.position : self.position + n])
        self.position += n
        return out

    def skip(self, n: int) -> None:
        if n > len(self._data) - self.position:
            raise EOFError(n)
        self.position += n

    def at_end(self) -> bool:
        return self.position >= len(self._data)


class _InflatingReader:
    """Raw-deflate (RFC 1951) input inflated on demand; more than ``limit`` bytes out is refused."""

    def __init__(self, data: bytes | memoryview, limit: int) -> None:
        self._input = memoryview(data)
        self._fed = 0
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._off = 0
        self._produced = 0
        self._limit = limit
        self._done = False
        self.position = 0

    def _more(self) -> bool:
        """Inflate one more chunk into the buffer; False at the end of the stream."""
        if self._done:
            return False
        if self._z.unconsumed_tail:
            out = self._z.decompress(self._z.unconsumed_tail, _CHUNK)
        elif self._fed < len(self._input) and not self._z.eof:
            piece = self._input[self._fed : self._fed + _CHUNK]
            self._fed += len(piece)
            out = self._z.decompress(piece, _CHUNK)
        else:
            out = self._z.flush()
            self._done = True
        self._produced += len(out)
        if self._produced > self._limit:
            raise InstanceLimitError(
                "max_instance_bytes",
                f"the deflated data set inflates to more than max_instance_bytes ({self._limit} bytes)",
            )
        if self._off > _CHUNK:
            del self._buf[: self._off]
            self._off = 0
        self._buf += out
        return True

    def _available(self) -> int:
        return len(self._buf) - self._off

    def read(self, n: int) -> bytes:
        while self._available() < n:
            if not self._more():
                raise EOFError(n)
        out = bytes(self._buf[self._off : self._off + n])
        self._off += n
        self.position += n
        return out

    def skip(self, n: int) -> None:
        remaining = n
        while True:
            take = min(remaining, self._available())
            self._off += take
            remaining -= take
            if not remaining:
                break
            del self._buf[:]
            self._off = 0
            if not self._more():
                raise EOFError(n)
        self.position += n

    def at_end(self) -> bool:
        while not self._available():
            if not self._more():
                return True
        return False


def inflate_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Inflate raw-deflated ``data`` (a Deflated Explicit VR Little Endian data set) a chunk at a
    time; :class:`InstanceLimitError` as soon as the output would pass ``limit`` bytes."""
    reader = _InflatingReader(data, limit)
    parts: list[bytes] = []
    try:
        while not reader.at_end():
            parts.append(reader.read(reader._available()))
    except zlib.error as e:
        raise MalformedInstanceError("deflate", f"the deflated data set is corrupt: {e}") from e
    return b"".join(parts)


# -- the walk -------------------------------------------------------------------------------------
@dataclass
class _Facts:
    """What the pixel rules need, gathered from the top level of the data set."""

    values: dict[int, bytes] = field(default_factory=dict)
    pixel_length: int | None = None  # native Pixel Data value length
    fragments: int | None = None  # encapsulated: fragment items after the Basic Offset Table
    offsets: int = 0  # encapsulated: Basic Offset Table entries
    header_end: int | None = None  # where group 7FE0 starts (the header for indexing ends there)
    float_pixels: bool = False


class _Walker:
    def __init__(self, reader: _Reader, explicit: bool, little: bool) -> None:
        self.r = reader
        self.explicit = explicit
        self.endian = "<" if little else ">"

    def header(self) -> tuple[int, bytes | None, int]:
        """(tag, VR or None, value length) of the next element or item."""
        raw = self.r.read(8)
        group, elem = struct.unpack(self.endian + "HH", raw[:4])
        tag = group << 16 | elem
        if tag in (_ITEM, _ITEM_END, _SEQUENCE_END) or not self.explicit:
            return tag, None, struct.unpack(self.endian + "L", raw[4:])[0]
        vr = raw[4:6]
        if vr in _LONG_LENGTH_VRS:
            return tag, vr, struct.unpack(self.endian + "L", self.r.read(4))[0]
        if not (b"AA" <= vr <= b"ZZ"):
            raise MalformedInstanceError("vr", f"element {_t(tag)} has no valid VR ({vr!r})")
        return tag, vr, struct.unpack(self.endian + "H", raw[6:])[0]

    def dataset(self, facts: _Facts | None, depth: int, in_item: bool, end: int | None) -> None:
        """Walk one data set: to the end of input (top level), an item's end, or an item delimiter."""
        previous = -1
        while True:
            if end is not None and self.r.position >= end:
                if self.r.position > end:
                    raise MalformedInstanceError("length", "an item's elements run past its declared length")
                return
            if end is None and not in_item and self.r.at_end():
                return
            start = self.r.position
            tag, vr, length = self.header()
            if tag == _ITEM_END and in_item and end is None:
                return
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise MalformedInstanceError("delimiter", f"unexpected item tag {_t(tag)} at byte {start}")
            if tag <= previous:
                raise MalformedInstanceError(
                    "tag-order", f"element {_t(tag)} follows {_t(previous)}: tags must ascend (PS3.5 §7.1)"
                )
            previous = tag
            if facts is not None and facts.header_end is None and tag >= _PIXEL_GROUP_START:
                facts.header_end = start
            self.value(tag, vr, length, facts, depth)

    def value(self, tag: int, vr: bytes | None, length: int, facts: _Facts | None, depth: int) -> None:
        is_sequence = vr == b"SQ" or (vr in (None, b"UN") and length == _UNDEFINED and tag != _PIXEL_DATA)
        if is_sequence and vr == b"UN" and self.explicit:
            # PS3.5 §6.2.2: an undefined-length UN is a sequence encoded in Implicit VR Little Endian
            _Walker(self.r, explicit=False, little=True).sequence(tag, length, depth)
        elif is_sequence:
            self.sequence(tag, length, depth)
        elif length == _UNDEFINED:
            if tag != _PIXEL_DATA:
                raise MalformedInstanceError(
                    "undefined-length", f"element {_t(tag)} has an undefined length but is no sequence"
                )
            self.encapsulated(facts if facts is not None else _Facts())  # nested: an icon image
        elif facts is not None and tag in _WANTED:
            if length > _MAX_WANTED_LENGTH:
                raise MalformedInstanceError("length", f"element {_t(tag)} is {length} bytes long")
            facts.values[tag] = self.r.read(length)
        else:
            if facts is not None and tag == _PIXEL_DATA:
                facts.pixel_length = length
            if facts is not None and tag in _FLOAT_PIXEL_DATA:
                facts.float_pixels = True
            self.r.skip(length)

    def sequence(self, tag: int, length: int, depth: int) -> None:
        if depth >= _MAX_DEPTH:
            raise MalformedInstanceError("depth", f"sequences nested deeper than {_MAX_DEPTH} at {_t(tag)}")
        end = None if length == _UNDEFINED else self.r.position + length
        while True:
            if end is not None and self.r.position >= end:
                if self.r.position > end:
                    raise MalformedInstanceError("length", f"sequence {_t(tag)} overruns its length")
                return
            item, _vr, item_length = self.header()
            if item == _SEQUENCE_END and end is None:
                return
            if item != _ITEM:
                raise MalformedInstanceError(
                    "sequence", f"sequence {_t(tag)} holds {_t(item)} where an item or its end belongs"
                )
            item_end = None if item_length == _UNDEFINED else self.r.position + item_length
            self.dataset(None, depth + 1, in_item=True, end=item_end)

    def encapsulated(self, facts: _Facts) -> None:
        """Encapsulated Pixel Data: a Basic Offset Table item, fragment items, a sequence delimiter."""
        items = 0
        while True:
            tag, _vr, length = self.header()
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM or length == _UNDEFINED:
                raise MalformedInstanceError(
                    "encapsulation", f"encapsulated Pixel Data holds {_t(tag)} where a fragment belongs"
                )
            if items == 0:
                if length % 4:
                    raise MalformedInstanceError(
                        "encapsulation", "Basic Offset Table length not a multiple of 4"
                    )
                facts.offsets = length // 4
            items += 1
            self.r.skip(length)
        if items == 0:
            raise MalformedInstanceError(
                "encapsulation", "encapsulated Pixel Data without a Basic Offset Table"
            )
        facts.fragments = items - 1


def _t(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# -- the rules ------------------------------------------------------------------------------------
def _us(facts: _Facts, tag: int, little: bool) -> int | None:
    raw = facts.values.get(tag)
    if raw is None or len(raw) < 2:
        return None
    return int(struct.unpack(("<" if little else ">") + "H", raw[:2])[0])


def _number_of_frames(facts: _Facts) -> int:
    raw = facts.values.get(_FRAMES)
    text = raw.decode("ascii", "replace").strip(" \x00") if raw else ""
    if not text:
        return 1
    try:
        frames = int(text.split("\\")[0])
    except ValueError as e:
        raise InconsistentInstanceError("NumberOfFrames", f"NumberOfFrames {text!r} is not a number") from e
    if frames < 1:
        raise InconsistentInstanceError("NumberOfFrames", f"NumberOfFrames is {frames}")
    return frames


def _check_pixels(facts: _Facts, transfer_syntax: UID, limits: InstanceLimits) -> None:
    has_pixels = facts.pixel_length is not None or facts.fragments is not None
    if not has_pixels:
        return
    little = transfer_syntax.is_little_endian
    rows, columns = _us(facts, _ROWS, little), _us(facts, _COLUMNS, little)
    if not rows or not columns:
        raise InconsistentInstanceError(
            "Rows/Columns", "Pixel Data present but Rows or Columns missing or zero (Image Pixel Module)"
        )
    frames = _number_of_frames(facts)
    samples = _us(facts, _SAMPLES, little) or 1
    bits = _us(facts, _BITS_ALLOCATED, little) or 0
    if facts.pixel_length is not None:
        expected = _native_length(facts, rows, columns, frames, samples, bits)
        if facts.pixel_length < expected:
            raise InconsistentInstanceError(
                "PixelData-length",
                f"Pixel Data is {facts.pixel_length} bytes but NumberOfFrames {frames} × Rows {rows} × "
                f"Columns {columns} × SamplesPerPixel {samples} × BitsAllocated {bits}/8 needs {expected}",
            )
    elif facts.fragments is not None and not str(transfer_syntax).startswith(_VIDEO_PREFIXES):
        # PS3.5 §A.4: each frame is one or more fragments, and a non-empty Basic Offset Table has
        # one offset per frame.
        if facts.fragments < frames:
            raise InconsistentInstanceError(
                "PixelData-fragments",
                f"NumberOfFrames {frames} but encapsulated Pixel Data has {facts.fragments} fragment(s)",
            )
        if facts.offsets and facts.offsets != frames:
            raise InconsistentInstanceError(
                "PixelData-offsets",
                f"the Basic Offset Table has {facts.offsets} entries for NumberOfFrames {frames}",
            )
    for rule, value, limit in (
        ("max_frames", frames, limits.max_frames),
        ("max_rows", rows, limits.max_rows),
        ("max_columns", columns, limits.max_columns),
    ):
        if value > limit:
            raise InstanceLimitError(rule, f"{rule.removeprefix('max_')} is {value}, over {rule} ({limit})")


def _native_length(facts: _Facts, rows: int, columns: int, frames: int, samples: int, bits: int) -> int:
    photometric = facts.values.get(_PHOTOMETRIC, b"").decode("ascii", "replace").strip(" \x00")
    if bits not in (1, 8, 16, 32, 64):
        raise InconsistentInstanceError("BitsAllocated", f"BitsAllocated is {bits} for native Pixel Data")
    pixels = rows * columns * frames
    if photometric == "YBR_FULL_422":  # two chroma samples per two pixels (PS3.3 C.7.6.3.1.2)
        return pixels * 2 * bits // 8
    if bits == 1:
        return (pixels * samples + 7) // 8
    return pixels * samples * bits // 8


def too_large(size: int, limits: InstanceLimits) -> InstanceLimitError:
    """The refusal of a data set of ``size`` bytes, over ``max_instance_bytes``."""
    return InstanceLimitError(
        "max_instance_bytes",
        f"the data set is {size} bytes, over max_instance_bytes ({limits.max_instance_bytes})",
    )


def check_instance(encoded: bytes | memoryview, transfer_syntax_uid: str, limits: InstanceLimits) -> Dataset:
    """Walk an encoded data set (no File Meta Information) and apply every rule; return its header.

    The header is the data set up to (not including) the Pixel Data group, parsed by pydicom: all
    that indexing needs. A deflated data set is walked while it is inflated (bounded) and its
    header inflated again up to the Pixel Data group only. Raises an ``InvalidInstanceError``
    subclass naming the rule broken.
    """
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise MalformedInstanceError("transfer-syntax", f"{shown(ts)} is not a transfer syntax")
    explicit, little = not ts.is_implicit_VR, ts.is_little_endian
    facts = _Facts()
    if not ts.is_deflated and len(encoded) > limits.max_instance_bytes:
        raise too_large(len(encoded), limits)
    reader: _Reader = (
        _InflatingReader(encoded, limits.max_instance_bytes) if ts.is_deflated else _BytesReader(encoded)
    )
    if explicit and little and not ts.is_deflated and not _looks_explicit(encoded):
        explicit = False  # tolerant read: an explicit-VR syntax encoded as implicit (pydicom does the same)
    try:
        _Walker(reader, explicit, little).dataset(facts, depth=0, in_item=False, end=None)
    except EOFError as e:
        raise MalformedInstanceError(
            "truncated", f"the data set ends inside an element or sequence (at byte {reader.position})"
        ) from e
    except (zlib.error, struct.error) as e:
        raise MalformedInstanceError("encoding", f"cannot walk the data set: {e}") from e
    _check_pixels(facts, ts, limits)
    header_end = reader.position if facts.header_end is None else facts.header_end
    if ts.is_deflated:
        head_reader = _InflatingReader(encoded, limits.max_instance_bytes)
        head = head_reader.read(header_end)
    else:
        head = bytes(memoryview(encoded)[:header_end])
    return _parse_header(head, ts)


def _looks_explicit(encoded: bytes | memoryview) -> bool:
    """Whether the first element carries a VR (two upper-case letters) after its tag."""
    vr = bytes(memoryview(encoded)[4:6])
    return len(vr) < 2 or (b"AA" <= vr <= b"ZZ" and vr.isupper())


def _parse_header(head: bytes, ts: UID) -> Dataset:
    try:
        return read_dataset(io.BytesIO(head), ts.is_implicit_VR, ts.is_little_endian)
    except PARSE_ERRORS as e:
        raise MalformedInstanceError("header", f"cannot read the header: {type(e).__name__}: {e}") from e


def check_part10(data: bytes | memoryview, limits: InstanceLimits) -> Dataset:
    """A PS3.10 file (preamble + ``DICM`` + File Meta Information + data set): check the data set
    with :func:`check_instance`; return its header with ``file_meta`` set."""
    view = memoryview(data)
    if bytes(view[128:132]) == b"DICM":
        start = 132
    elif bytes(view[:4]) == b"DICM":
        start = 4
    else:
        raise MalformedInstanceError("part10", "not a DICOM PS3.10 file (no 'DICM' prefix)")
    reader = _BytesReader(view[start:])
    walker = _Walker(reader, explicit=True, little=True)
    meta_end = 0
    try:
        while bytes(view[start + meta_end : start + meta_end + 2]) == b"\x02\x00":  # group 0002, LE
            tag, vr, length = walker.header()
            walker.value(tag, vr, length, None, 0)
            meta_end = reader.position
    except EOFError as e:
        raise MalformedInstanceError("part10", "the File Meta Information is truncated") from e
    try:
        meta = FileMetaDataset(read_dataset(io.BytesIO(bytes(view[start : start + meta_end])), False, True))
        ts = str(meta.get("TransferSyntaxUID", "") or "").strip()
        for _element in meta:  # decode every (small) meta element now, not later in a caller
            pass
    except PARSE_ERRORS as e:
        msg = f"cannot read the File Meta Information: {type(e).__name__}: {e}"
        raise MalformedInstanceError("part10", msg) from e
    if not ts:
        raise MalformedInstanceError("part10", "the File Meta Information has no TransferSyntaxUID")
    header = check_instance(view[start + meta_end :], ts, limits)
    header.file_meta = meta
    return header
