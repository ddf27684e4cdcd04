"""Fuzz targets shared by the CI subset (``tests/integration/test_fuzz_subset.py``, fixed seeds, 500
inputs each) and the nightly-style coverage-guided run (``bench/fuzz.py``, atheris, 10 000 each).

Each in-process target takes bytes and either succeeds or raises a :class:`RadloopError` subclass
(the error hierarchy every edge turns into a DICOM status or a problem response). Anything else is
a finding: an exception that would reach a 500, kill a worker or a reactor thread.

The PDU target talks to a running SCP over TCP: well-formed A-ASSOCIATE-RQ / P-DATA-TF bytes are
built here by hand (PS3.8 9.3), mutated, sent, and the connection closed; the server must stay up
and keep answering C-ECHO.
"""

from __future__ import annotations

import io
import random
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radloop.core.errors import RadloopError
from radloop.core.refs import SeriesRef

Target = Callable[[bytes], None]
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


# --------------------------------------------------------------------------- mutation


def mutate(seed: bytes, rng: random.Random, max_len: int = 1 << 16) -> bytes:
    """A few random edits of ``seed``: bit flips, byte runs, interesting integers, cuts, splices."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2 and data:
            del data[pos : pos + rng.randint(1, 32)]
        elif op == 3 and len(data) >= 4:
            i = min(pos, len(data) - 4)
            value = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF])
            fmt = rng.choice([">I", "<I", ">H", "<H"])
            packed = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            data[i : i + len(packed)] = packed
        elif op == 4:
            del data[pos:]
        elif op == 5 and data:
            start = rng.randrange(len(data))
            chunk = data[start : start + rng.randint(1, 64)]
            data[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 6 and data:
            i = min(pos, len(data) - 1)
            data[i] = rng.choice([0x00, 0x01, 0x02, 0x04, 0x05, 0x07, 0x20, 0xFE, 0xFF])
    return bytes(data[:max_len])


def inputs(corpus: list[bytes], seed: int, count: int) -> Iterator[bytes]:
    """``count`` mutated inputs from ``corpus``, the same ones for the same seed."""
    rng = random.Random(seed)
    for i in range(count):
        yield corpus[i % len(corpus)] if i < len(corpus) else mutate(rng.choice(corpus), rng)


@dataclass
class Finding:
    target: str
    data: bytes
    error: BaseException

    def __str__(self) -> str:
        return f"{self.target}: {type(self.error).__name__}: {self.error} (input {self.data[:64]!r}…)"


def run_target(name: str, target: Target, data: bytes) -> Finding | None:
    """Run one input; a :class:`Finding` if it raised anything but a :class:`RadloopError`."""
    try:
        target(data)
    except RadloopError:
        return None
    except Exception as e:  # the point of a fuzzer: anything else is a finding
        return Finding(name, data, e)
    return None


# --------------------------------------------------------------------------- seed objects


def small_mr(
    *, rows: int = 8, columns: int = 8, position: float = 0.0, series_uid: str | None = None
) -> Dataset:
    """A small valid MR image (explicit VR little endian) for seeds."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.2"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.Modality = "MR"
    ds.PatientID = "FUZZ"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, position]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) % 4096).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- in-process targets


def header_store_target(workdir: Path) -> tuple[Target, list[bytes]]:
    """The DICOM header → store path that C-STORE and STOW-RS share (:class:`IngestSession`)."""
    from radloop.connector.ingest import IngestSession
    from radloop.connector.store import InstanceStore
    from radloop.core import db
    from radloop.core.settings import Settings

    settings = Settings(data_dir=workdir)
    db.upgrade(settings)
    store = InstanceStore(workdir, db.make_engine(settings), 0)

    def target(data: bytes) -> None:
        IngestSession(store, lambda _ids, _ae: None, "RADLOOP", "FUZZ").store_file(data)

    return target, [part10(small_mr()), part10(small_mr(rows=4, columns=16))]


def volume_target(workdir: Path) -> tuple[Target, list[bytes]]:
    """Series → volume over a 3-slice series whose middle file is the fuzz input."""
    from radloop.pipelines.volume import load_volume

    series_uid = "1.2.826.0.1.3680043.8.498.2"
    fixed = [workdir / "a.dcm", workdir / "c.dcm"]
    for path, z in zip(fixed, (0.0, 2.0), strict=True):
        path.write_bytes(part10(small_mr(position=z)))
    middle = workdir / "b.dcm"
    ref = SeriesRef("1.2.826.0.1.3680043.8.498.1", series_uid)

    def target(data: bytes) -> None:
        middle.write_bytes(data)
        load_volume([fixed[0], middle, fixed[1]], ref)

    return target, [part10(small_mr(position=1.0))]


def multipart_target() -> tuple[Target, list[bytes]]:
    """The STOW-RS multipart/related body parser."""
    from radloop.connector.dicomweb.multipart import MultipartReader

    boundary = "fuzzboundary"

    def target(data: bytes) -> None:
        reader = MultipartReader(boundary)
        for start in range(0, len(data), 97):  # in chunks, as a request body arrives
            reader.feed(data[start : start + 97])
        reader.finish()

    body = (
        b"--fuzzboundary\r\nContent-Type: application/dicom\r\n\r\n"
        + part10(small_mr())
        + b"\r\n--fuzzboundary\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--fuzzboundary--\r\n"
    )
    return target, [body]


def qido_target() -> tuple[Target, list[bytes]]:
    """The QIDO-RS query parser and attribute matching (the query string as ``key=value&…``)."""
    from urllib.parse import parse_qsl

    from radloop.connector.dicomweb.qido import QidoQuery, matches

    def target(data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        query = QidoQuery.parse(parse_qsl(text, keep_blank_values=True))
        for keyword, pattern in query.match.items():
            matches("DOE^JOHN", pattern, keyword)
            matches("20240101", pattern, keyword)

    seeds = [
        b"PatientName=DOE*&limit=10&offset=2&includefield=all",
        b"StudyDate=20200101-20241231&ModalitiesInStudy=MR&00100020=AB?C",
        b"SeriesDescription=*t1*&fuzzymatching=true&includefield=00080060,StudyTime",
        # regressions found by bench/fuzz.py: a repeater tag whose keyword does not map back
        b"10002000=dn&StudyDate=20200101",
        "limit=1&offset=\u00b2".encode(),
    ]
    return target, seeds


# --------------------------------------------------------------------------- PDUs (PS3.8 9.3)


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    called: str = "RADLOOP",
    calling: str = "FUZZER",
    contexts: tuple[tuple[int, str], ...] = ((1, VERIFICATION),),
) -> bytes:
    """A well-formed A-ASSOCIATE-RQ proposing ``contexts`` (id, abstract syntax) with implicit VR LE."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for pc_id, abstract in contexts:
        sub = _item(0x30, abstract.encode()) + _item(0x40, IMPLICIT_LE.encode())
        items += _item(0x20, bytes([pc_id, 0, 0, 0]) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32) + items
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def echo_pdata(pc_id: int = 1) -> bytes:
    """A P-DATA-TF carrying a C-ECHO-RQ command (implicit VR little endian)."""
    uid = VERIFICATION.encode() + b"\0"
    command = (
        _element(0x00000002, uid)
        + _element(0x00000100, struct.pack("<H", 0x0030))
        + _element(0x00000110, struct.pack("<H", 1))
        + _element(0x00000800, struct.pack("<H", 0x0101))
    )
    command = _element(0x00000000, struct.pack("<I", len(command))) + command
    pdv = struct.pack(">I", len(command) + 2) + bytes([pc_id, 0x03]) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def pdu_seeds() -> list[bytes]:
    rq = associate_rq()
    return [
        rq,
        rq + echo_pdata(),
        associate_rq(contexts=((1, VERIFICATION), (3, MR_IMAGE_STORAGE))) + echo_pdata(3),
        rq + echo_pdata() + bytes.fromhex("050000000004 00000000".replace(" ", "")),  # A-RELEASE-RQ
        bytes.fromhex("07000000000400000000"),  # A-ABORT
    ]


def send_pdu_bytes(host: str, port: int, data: bytes, read_timeout_s: float = 0.5) -> None:
    """Connect, send ``data``, read what comes back for a moment, close. Connection errors are expected."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(data)
            sock.settimeout(read_timeout_s)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, OSError):
                pass
    except OSError:
        pass
