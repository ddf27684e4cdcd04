"""Hostile DICOM objects found by the issue 12 test run, built as PS3.10 files (bytes).

Each is small on the wire; what makes it hostile is what it claims (a million frames, a
gigabyte of zeros once inflated) or how it is broken (short pixel data, garbage after an
undefined-length element). Used by the sanity unit tests and the SCP integration tests.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)


def ct_dataset(rows: int = 128, columns: int = 128, frames_of_data: int = 1) -> Dataset:
    """A small, valid CT image (16-bit, native) with fresh UIDs."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "HOSTILE"
    ds.PatientName = "Hostile^Test"
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((frames_of_data, rows, columns), dtype="<u2").tobytes()
    return ds


def encode_dataset(ds: Dataset) -> bytes:
    """The data set alone, Explicit VR Little Endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def part10(ds: Dataset, body: bytes | None = None, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A PS3.10 file: preamble, meta for ``ds``, then ``body`` (default: ``ds`` encoded)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    return bytes(128) + b"DICM" + fp.getvalue() + (encode_dataset(ds) if body is None else body)


def million_frames() -> bytes:
    """128×128 CT claiming NumberOfFrames 1,000,000 with one frame of pixel data."""
    ds = ct_dataset()
    ds.NumberOfFrames = 1_000_000
    return part10(ds)


def short_pixel_data(missing: int = 5000) -> bytes:
    ds = ct_dataset()
    ds.PixelData = ds.PixelData[:-missing]
    return part10(ds)


def no_rows() -> bytes:
    ds = ct_dataset()
    del ds.Rows
    return part10(ds)


def garbage_after_undefined_sq() -> bytes:
    """An undefined-length SQ, closed properly, then 40 bytes of garbage before Pixel Data."""
    ds = ct_dataset()
    item = Dataset()
    item.CodeValue = "1"
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    pixel = Dataset()
    pixel.add_new(0x7FE00010, "OW", ds.PixelData)
    del ds.PixelData
    return part10(ds, encode_dataset(ds) + b"\xde\xad\xbe\xef" * 10 + encode_dataset(pixel))


def garbage_after_undefined_ow() -> bytes:
    """A private OW element with an undefined length (legal only for encapsulated Pixel Data),
    a sequence delimiter, then garbage."""
    ds = ct_dataset()
    pixel = Dataset()
    pixel.add_new(0x7FE00010, "OW", ds.PixelData)
    del ds.PixelData
    ow = struct.pack("<HH2sHL", 0x0029, 0x0010, b"OW", 0, 0xFFFFFFFF) + b"\x00" * 64
    ow += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0) + b"\xba\xad\xf0\x0d" * 10
    return part10(ds, encode_dataset(ds) + ow + encode_dataset(pixel))


def deflate_bomb(inflated_bytes: int = 1000 * 1000 * 1000) -> bytes:
    """Deflated Explicit VR LE: a CT whose private OB holds ``inflated_bytes`` zeros (≈1/1000 on the wire)."""
    ds = ct_dataset()
    ds.add_new(0x00090010, "LO", "BOMB")
    head = encode_dataset(ds)
    # put the private OB (0009,1000) right after the private creator, before group 0010
    split = head.index(struct.pack("<HH", 0x0010, 0x0010))
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = BytesIO()
    out.write(z.compress(head[:split]))
    out.write(z.compress(struct.pack("<HH2sHL", 0x0009, 0x1000, b"OB", 0, inflated_bytes)))
    chunk = bytes(1 << 20)
    left = inflated_bytes
    while left:
        take = min(left, len(chunk))
        out.write(z.compress(chunk[:take]))
        left -= take
    out.write(z.compress(head[split:]))
    out.write(z.flush())
    return part10(ds, out.getvalue(), DeflatedExplicitVRLittleEndian)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
