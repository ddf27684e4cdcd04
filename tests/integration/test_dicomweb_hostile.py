"""DICOMweb under hostile input (issue 12), in process: ``create_app`` through Starlette's TestClient.

Instances that the receive checks would now refuse are written straight into the store (as an
older radloop, or a restored backup, would have left them); every answer must then be quick and
either correct or a problem (RFC 9457) that names the reason, never a 500 or a minutes-long stream.
"""

from __future__ import annotations

import io
import resource
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

from radloop import services
from radloop.api import create_app
from radloop.connector.dicomweb.multipart import new_boundary, write_parts
from radloop.connector.store import describe
from radloop.core.settings import load_settings

STUDY = generate_uid()
PROBLEM = "application/problem+json"
MB = 1 << 20


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    data = tmp_path_factory.mktemp("hostile")
    s = load_settings(
        data_dir=str(data / "data"),
        dicom={"min_free_bytes": 0, "listeners": [{"ae_title": "RADLOOP"}]},
    )
    return create_app(s)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    token = services.create_token(app.state.radloop.engine, "hostile", ["operator"]).token
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def _ct(
    series: str, *, frames: int = 1, rows: int = 16, cols: int = 16, syntax: str = ExplicitVRLittleEndian
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series
    ds.PatientID, ds.PatientName, ds.Modality = "HOSTILE", "Hostile^Input", "CT"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _store_directly(app: FastAPI, ds: Dataset) -> str:
    """Write ``ds`` into the store and index, past every receive check (as before issue 12)."""
    encoded = _encode(ds)
    header = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    info = describe(header, str(ds.file_meta.TransferSyntaxUID), "RADLOOP", "TEST")
    app.state.radloop.store.store(encoded, info, header)
    return str(ds.SOPInstanceUID)


def _url(ds: Dataset) -> str:
    return f"/dicomweb/studies/{STUDY}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _timed(client: TestClient, url: str, **kw: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.get(url, **kw)
    return response, time.monotonic() - started


def _is_problem(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith(PROBLEM)
    for word in words:
        assert word in response.json()["detail"]


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_qido_keeps_no_large_element_in_memory(app: FastAPI, client: TestClient) -> None:
    """A 256 MB private element: QIDO (includefield=all) and metadata never read it."""
    ds = _ct(generate_uid())
    del ds.NumberOfFrames
    ds.add_new(0x7FD10010, "LO", "HOSTILE")
    stored = app.state.radloop.store.store(
        _encode(ds), describe(ds, ExplicitVRLittleEndian, "RADLOOP", "TEST"), ds
    )
    size = 256 * MB  # appended to the stored file as its last element, in chunks: never in memory
    with stored.path.open("ab") as f:
        f.write(b"\xd1\x7f\x10\x10OB\x00\x00" + size.to_bytes(4, "little"))
        for _ in range(size // MB):
            f.write(bytes(MB))
    before = _max_rss()
    response, elapsed = _timed(client, f"/dicomweb/studies/{STUDY}/instances?includefield=all")
    assert response.status_code == 200 and elapsed < 2
    response, elapsed = _timed(client, _url(ds) + "/metadata")
    assert response.status_code == 200 and elapsed < 2
    (item,) = response.json()
    assert item["7FD11010"]["BulkDataURI"].endswith("/bulkdata/7FD11010")
    grown = _max_rss() - before
    print(f"QIDO + metadata of a study with a 256 MB private element: peak RSS +{grown / MB:.0f} MB")
    assert grown < 64 * MB


@pytest.mark.parametrize(
    "url",
    [
        "/dicomweb/studies?offset=" + "9" * 5000,
        "/dicomweb/studies?offset=%C2%B2",
        "/dicomweb/series?limit=%C2%B2",
        "/dicomweb/series?PatientName=x&offset=-1",
        "/dicomweb/studies?0010xxxx=1",
    ],
)
def test_bad_query_values_are_400_problems(client: TestClient, url: str) -> None:
    _is_problem(client.get(url), 400)


def test_wildcard_classes_match_literally(app: FastAPI, client: TestClient) -> None:
    ds = _ct(generate_uid())
    ds.PixelData = bytes(16 * 16 * 2)
    ds.SeriesDescription = "[!a]x"
    _store_directly(app, ds)
    found = client.get(f"/dicomweb/studies/{STUDY}/series", params={"SeriesDescription": "[!a]*"})
    assert [r["0020000E"]["Value"][0] for r in found.json()] == [ds.SeriesInstanceUID]
    none = client.get(f"/dicomweb/studies/{STUDY}/series", params={"SeriesDescription": "[!b]*"})
    assert none.status_code == 200 and none.json() == []


def test_million_frames_with_one_frame_of_data_fail_fast(app: FastAPI, client: TestClient) -> None:
    ds = _ct(generate_uid(), frames=1_000_000, rows=128, cols=128)
    ds.PixelData = bytes(128 * 128 * 2)
    _store_directly(app, ds)
    for url in (_url(ds) + "/frames/1", _url(ds) + "/frames/999999", _url(ds) + "/bulkdata/7FE00010"):
        response, elapsed = _timed(client, url)
        assert elapsed < 2, url
        _is_problem(response, 400, "NumberOfFrames")
    response, elapsed = _timed(
        client, _url(ds), headers={"Accept": "multipart/related; type=application/dicom"}
    )
    assert response.status_code == 200 and elapsed < 2
    for url in (
        _url(ds) + "/metadata",
        f"/dicomweb/studies/{STUDY}/instances",
        f"/dicomweb/studies/{STUDY}/series",
    ):
        response, elapsed = _timed(client, url)
        assert response.status_code == 200 and elapsed < 2, url


def test_tag_out_of_range_and_html_are_refused(app: FastAPI, client: TestClient) -> None:
    ds = _ct(generate_uid())
    ds.PixelData = bytes(16 * 16 * 2)
    _store_directly(app, ds)
    _is_problem(client.get(_url(ds) + "/bulkdata/1FFFFFFFF"), 400, "tag")
    _is_problem(client.get(_url(ds) + "/bulkdata/%C2%B2"), 400, "tag")
    _is_problem(client.get(_url(ds), headers={"Accept": "text/html"}), 406)
    ok = client.get(_url(ds))
    assert ok.status_code == 200
    for response in (ok, client.get("/dicomweb/studies"), client.get(_url(ds) + "/bulkdata/1FFFFFFFF")):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_big_endian_frames_and_instances_are_sent_little_endian(app: FastAPI, client: TestClient) -> None:
    ds = _ct(generate_uid(), frames=2, rows=4, cols=4, syntax=ExplicitVRBigEndian)
    pixels = (np.arange(32, dtype=np.uint16) * 257 + 1).reshape(2, 4, 4)
    ds.PixelData = pixels.astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.RescaleSlope, ds.WindowCenter = 2, 40  # numeric values re-encoded too
    _store_directly(app, ds)
    octets = "multipart/related; type=application/octet-stream"
    frames = client.get(_url(ds) + "/frames/2", headers={"Accept": octets})
    assert frames.status_code == 200
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in frames.text[:400]
    assert pixels[1].astype("<u2").tobytes() in frames.content
    assert pixels[1].astype(">u2").tobytes() not in frames.content
    accept = f"multipart/related; type=application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    instance = client.get(_url(ds), headers={"Accept": accept})
    assert instance.status_code == 200
    start = instance.content.index(b"\r\n\r\n") + 4
    received = pydicom.dcmread(io.BytesIO(instance.content[start:]))
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(received.pixel_array, pixels)
    assert received.RescaleSlope == 2 and received.Rows == 4


def _deflate_bomb(inflated: int) -> tuple[str, bytes]:
    """A Deflated Explicit VR Little Endian CT (its SOP Instance UID, its file) whose data set ends
    in a private OB of ``inflated`` zero bytes: about a thousandth of that on the wire."""
    ds = _ct(generate_uid())
    del ds.NumberOfFrames
    plain = _encode(ds)
    meta_end = 132 + 12 + int.from_bytes(plain[140:144], "little")
    dataset = plain[meta_end:] + b"\xd1\x7f\x10\x00LO\x08\x00HOSTILE " + b"\xd1\x7f\x10\x10OB\x00\x00"
    dataset += inflated.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(dataset)]
    chunks += [deflater.compress(bytes(4 * MB)) for _ in range(inflated // (4 * MB))]
    chunks.append(deflater.flush())
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    return str(ds.SOPInstanceUID), bytes(128) + b"DICM" + head.getvalue() + b"".join(chunks)


def test_a_deflate_bomb_over_stow_is_refused_per_instance(client: TestClient) -> None:
    sop_uid, bomb = _deflate_bomb(1000 * MB)
    print(f"deflate bomb: {len(bomb) / 1024:.0f} KB on the wire, 1000 MB inflated")
    boundary = new_boundary()
    body = b"".join(write_parts([("application/dicom", bomb)], boundary))
    before = _max_rss()
    response = client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    grown = _max_rss() - before
    print(f"STOW of the bomb: HTTP {response.status_code}, peak RSS +{grown / MB:.0f} MB")
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [sop_uid]
    assert failed["00081197"]["Value"] == [0xA700]
    assert "max_instance_bytes" in response.headers["warning"]
    assert grown < 128 * MB


def test_stow_larger_than_the_limit_is_413_before_reading(client: TestClient) -> None:
    response = client.post(
        "/dicomweb/studies",
        content=b"x" * 10,
        headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            "Content-Length": str(2 << 30),
        },
    )
    _is_problem(response, 413, "max_request_bytes")
