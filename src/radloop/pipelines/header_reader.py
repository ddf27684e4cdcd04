"""The first groups of a stored image's header, read the way pydicom's ``read_partial`` reads them,
in one pass over bytes already in memory.

The series → volume step (:mod:`radloop.pipelines.volume`) needs groups 0002-0028 of every slice
(patient, study, series, frame of reference, image plane and pixel modules). pydicom's reader
yields those elements one by one through a general generator (file reads, VR heuristics,
deferred reads): for a 170-slice series that generator was most of the step's header time.
Here the common layout, a Part 10 file (preamble, ``DICM``, File Meta Information) in Explicit
VR Little Endian, is walked with ``struct`` over the bytes, and the result is the data set
``read_partial(fp, stop_when=group > 0028, force=True)`` returns: a
:class:`~pydicom.dataset.FileDataset` of the same raw elements (values still undecoded), the
same File Meta Information, preamble, file name and original encoding. Sequences of undefined
length are parsed by pydicom's own ``read_sequence``, as its generator does.

Anything else (no preamble, another transfer syntax, a command set, undefined lengths other
than sequences, an unknown VR, a value running past the end of the file) returns None, and
the caller reads the file with pydicom: the fast path never guesses.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from typing import BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

from radloop.core.errors import PARSE_ERRORS

LAST_GROUP = 0x0028
"""The last group read: every attribute the volume reader and the result writers take per slice."""

_PREAMBLE = 128
_MAGIC = b"DICM"
_UNDEFINED = 0xFFFFFFFF
_ELEMENT = struct.Struct("<HH2sH")
_LENGTH_32 = struct.Struct("<L")
_VRS = {str(vr.value).encode(): str(vr.value) for vr in VR if len(vr.value) == 2}
"""The encoded VRs pydicom's generator accepts (its ``ENCODED_VR``), as the strings it stores."""
_LONG_VRS = frozenset(vr.encode() for vr in _VRS.values() if vr in EXPLICIT_VR_LENGTH_32)
_EMPTY_RAW_VALUE = {vr: empty_value_for_VR(vr, raw=True) for vr in _VRS.values()}
"""What pydicom's generator stores for a value of length 0, by VR."""
_CHARSET = 0x00080005


class _NotFastPath(Exception):
    """The bytes are not laid out as this reader expects; pydicom reads the file instead."""


_FALL_BACK: tuple[type[Exception], ...] = (_NotFastPath, *PARSE_ERRORS)


def read_first_groups(data: bytes, fp: BinaryIO) -> FileDataset | None:
    """Groups 0002-:data:`LAST_GROUP` of the Part 10 file whose bytes are ``data`` (``fp`` is the
    open file they came from, named in the result as pydicom names it), or None when the file is
    not a preamble + Explicit VR Little Endian file that this reader walks exactly as pydicom."""
    try:
        return _read(data, fp)
    except _FALL_BACK:  # malformed: pydicom reads it (and tolerates or raises, as it does)
        return None


def read_file_meta_uids(head: bytes, keywords: Mapping[int, str]) -> tuple[dict[str, str], int] | None:
    """The text of the File Meta elements ``keywords`` names (by element number in group 0002) and
    the data set's offset, when ``head`` (a file's first bytes) holds a preamble, ``DICM`` and a
    whole Explicit VR group 0002; None for anything else (then pydicom reads the file)."""
    if head[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        return None
    try:
        elements, position = _elements(head, _PREAMBLE + 4, lambda group: group != 0x0002)
    except _FALL_BACK:
        return None
    if position + 8 > len(head):
        return None  # the meta runs past ``head`` (or the file ends in it)
    found = {}
    for tag, element in elements.items():
        name = keywords.get(tag & 0xFFFF)
        if name is not None and isinstance(element, RawDataElement):
            found[name] = bytes(element.value or b"").rstrip(b"\0 ").decode("ascii", "replace")
    return found, position


def _read(data: bytes, fp: BinaryIO) -> FileDataset:
    if data[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        raise _NotFastPath
    meta_elements, position = _elements(data, _PREAMBLE + 4, lambda group: group != 0x0002)
    file_meta = FileMetaDataset(Dataset(meta_elements))
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
    )
    if not meta_elements or file_meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        raise _NotFastPath
    file_meta[next(iter(meta_elements))]  # pydicom decodes the first element (to test its VR)
    if position + 2 <= len(data) and struct.unpack_from("<H", data, position)[0] == 0x0000:
        raise _NotFastPath  # a command set (group 0000): pydicom merges it
    if position >= len(data):
        raise _NotFastPath  # no data set: pydicom then calls it implicit VR
    elements, _ = _elements(data, position, lambda group: group > LAST_GROUP)
    dataset = Dataset(elements, parent_encoding=default_encoding)
    encoding: str | list[str] = default_encoding
    charset = elements.get(BaseTag(_CHARSET))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    dataset.set_original_encoding(False, True, encoding)
    ds = FileDataset(fp, dataset, data[:_PREAMBLE], file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _elements(
    data: bytes, position: int, stop: Callable[[int], bool]
) -> tuple[dict[BaseTag, RawDataElement | DataElement], int]:
    """The elements from ``position`` up to the first whose group ``stop(group)`` is true, as
    pydicom's generator yields them; and the position of that first element."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    encoding: str | list[str] = default_encoding
    end = len(data)
    unpack, unpack_length = _ELEMENT.unpack_from, _LENGTH_32.unpack_from
    vrs, long_vrs, empty = _VRS, _LONG_VRS, _EMPTY_RAW_VALUE
    while position + 8 <= end:
        group, element, vr_bytes, length = unpack(data, position)
        if stop(group):
            return elements, position
        vr = vrs.get(vr_bytes)
        if vr is None:
            raise _NotFastPath
        header = 8
        if vr_bytes in long_vrs:
            if position + 12 > end:
                raise _NotFastPath
            length = unpack_length(data, position + 8)[0]
            header = 12
        number = group << 16 | element
        tag = BaseTag(number)
        start = position + header
        if length == _UNDEFINED:
            if vr != "SQ":
                raise _NotFastPath
            source = io.BytesIO(data)  # shares ``data``; pydicom reads the items from it
            source.seek(start)
            sequence = read_sequence(source, False, True, length, encoding)
            elements[tag] = DataElement(tag, vr, sequence, start, is_undefined_length=True)
            position = source.tell()
            continue
        if start + length > end:
            raise _NotFastPath
        value = data[start : start + length] if length else empty[vr]
        if number == _CHARSET:
            encoding = convert_encodings(convert_string(value or b"", True))  # type: ignore[arg-type]
        elements[tag] = RawDataElement(tag, vr, length, value, start, False, True)  # type: ignore[arg-type]
        position = start + length
    return elements, position
