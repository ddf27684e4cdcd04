"""The SCU's File Meta reading (issue 13): the quick parser agrees with pydicom on real files
(plain, gzip-compressed, JPEG 2000) and leaves anything unusual to pydicom."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from radloop.connector.dimse.scu import data_set_bytes, read_header


def _expected(path: Path) -> tuple[str, str, str, bytes]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), raw[meta_end:]


@pytest.mark.parametrize(
    "folder", ["ct-abdomen-totalseg/series", "mr-brain-t1-philips/series"], ids=["j2k-ct", "gz-t1"]
)
def test_header_and_data_set_bytes_match_pydicom(shared_data: Path, folder: str) -> None:
    for f in sorted((shared_data / folder).iterdir())[:5]:
        header = read_header(f)
        sop_class, sop_instance, syntax, data_set = _expected(f)
        assert (header.sop_class, header.sop_instance, str(header.transfer_syntax)) == (
            sop_class,
            sop_instance,
            syntax,
        )
        assert data_set_bytes(f, header) == data_set


def test_a_file_meta_longer_than_the_quick_window_is_read_by_pydicom(
    synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    source = sorted(synthetic_ct_dir.iterdir())[0]
    ds = pydicom.dcmread(source)
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3"
    ds.file_meta.PrivateInformation = b"x" * 5000  # (0002,0102) OB: the meta outgrows 4 KiB
    target = tmp_path / "long-meta.dcm"
    ds.save_as(target, enforce_file_format=True)
    header = read_header(target)
    assert header.sop_instance == str(ds.SOPInstanceUID) and header.data_set_offset > 5000
    assert data_set_bytes(target, header) == _expected(target)[3]


def test_a_file_that_is_not_dicom_is_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    with pytest.raises(InvalidDicomError):
        read_header(text)


def test_an_implicit_vr_file_meta_is_left_to_pydicom(synthetic_ct_dir: Path, tmp_path: Path) -> None:
    """Some old writers encode group 0002 in Implicit VR (not conformant): the quick parser must
    not misread it; pydicom's reader gets it right."""
    source = sorted(synthetic_ct_dir.iterdir())[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    data_set = _expected(source)[3]

    def element(number: int, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        return struct.pack("<HHL", 0x0002, number, len(value)) + value

    meta = b"".join(
        (
            element(0x0001, b"\0\1"),
            element(0x0002, str(ds.file_meta.MediaStorageSOPClassUID).encode()),
            element(0x0003, str(ds.file_meta.MediaStorageSOPInstanceUID).encode()),
            element(0x0010, str(ds.file_meta.TransferSyntaxUID).encode()),
        )
    )
    target = tmp_path / "implicit-meta.dcm"
    target.write_bytes(bytes(128) + b"DICM" + element(0x0000, struct.pack("<L", len(meta))) + meta + data_set)
    with pytest.warns(UserWarning, match="implicit VR"):
        header = read_header(target)
    assert (header.sop_instance, str(header.transfer_syntax)) == (
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
    )
    assert data_set_bytes(target, header) == data_set
