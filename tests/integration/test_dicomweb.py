"""DICOMweb against a real ``radloop serve``: STOW-RS in (per virtual AE title), and QIDO-RS /
WADO-RS out, driven by dicomweb-client (a real DICOMweb client) and DCMTK.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from sqlmodel import Session, select

import peers
from radloop.connector.dicomweb.multipart import new_boundary, write_parts
from radloop.core.models import Job, JobState, Result
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

BRAIN_AE = "RADLOOP_BRAIN"
LISTENERS = {
    "dicom": {
        "listeners": [
            {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60},
            {"ae_title": "RADLOOP", "pipelines": ["brain-extraction"], "quiet_period_s": 60},
        ]
    }
}
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
OCTETS = (("application/octet-stream", "1.2.840.10008.1.2.1"),)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _client(server: RadloopServer, token: str, root: str = "/dicomweb") -> DICOMwebClient:
    return DICOMwebClient(server.api_url + root, headers={"Authorization": f"Bearer {token}"})


def _stow_raw(
    server: RadloopServer,
    token: str,
    parts: list[tuple[str, bytes]],
    path: str,
    content_type: str | None = None,
) -> requests.Response:
    boundary = new_boundary()
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'
    body = b"".join(write_parts(parts, boundary))
    return requests.post(
        server.api_url + path,
        data=body,
        timeout=60,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )


def _jobs(server: RadloopServer) -> list[Job]:
    with Session(server.engine) as s:
        return list(s.exec(select(Job)).all())


def _results(server: RadloopServer) -> list[Result]:
    with Session(server.engine) as s:
        return list(s.exec(select(Result)).all())


@pytest.fixture
def ct_series(tmp_path: Path) -> list[Path]:
    return peers.make_synthetic_ct_series(tmp_path / "ct", n=6, rows=64, cols=64, seed=3)


def test_dicomweb_client_searches_and_retrieves(
    tmp_path: Path, ct_series: list[Path], ct_j2k_series_dir: Path
) -> None:
    with RadloopServer(_dir(tmp_path / "r"), LISTENERS) as server:
        token = server.create_token("viewer")
        stored = _client(server, token, "/dicomweb/aets/RADLOOP").store_instances(
            [pydicom.dcmread(p) for p in ct_series]
        )
        assert (
            len(stored.ReferencedSOPSequence) == 6
            and "FailedSOPSequence" not in stored
            or not stored.FailedSOPSequence
        )
        assert peers.storescu(ct_j2k_series_dir, "127.0.0.1", server.port, "RADLOOP").returncode == 0
        client = _client(server, token)

        studies = client.search_for_studies()
        assert len(studies) == 2
        ct = pydicom.dcmread(ct_series[0])
        (found,) = client.search_for_studies(search_filters={"PatientID": "SYNTH-CT"})
        assert found["0020000D"]["Value"] == [ct.StudyInstanceUID]
        assert found["00201208"]["Value"] == [6] and found["00080061"]["Value"] == ["CT"]
        assert client.search_for_studies(search_filters={"StudyDate": "20240101-20240102"})[0] == found
        assert client.search_for_studies(search_filters={"PatientName": "synth*"}) == [found]
        assert client.search_for_studies(search_filters={"AccessionNumber": "NOPE"}) == []

        (series,) = client.search_for_series(ct.StudyInstanceUID)
        assert series["0020000E"]["Value"] == [ct.SeriesInstanceUID] and series["00201209"]["Value"] == [6]
        instances = client.search_for_instances(
            ct.StudyInstanceUID, ct.SeriesInstanceUID, search_filters={"InstanceNumber": "3"}
        )
        assert [i["00080018"]["Value"][0] for i in instances] == [
            str(pydicom.dcmread(ct_series[2]).SOPInstanceUID)
        ]

        metadata = client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
        assert len(metadata) == 6
        first = pydicom.Dataset.from_json(metadata[0], bulk_data_uri_handler=lambda *_: b"")
        assert first.Rows == 64 and first.Modality == "CT"
        assert "BulkDataURI" in metadata[0]["7FE00010"]

        frames = client.retrieve_instance_frames(
            ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1], media_types=OCTETS
        )
        assert frames == [ct.PixelData]
        bulk = client.retrieve_bulkdata(metadata[0]["7FE00010"]["BulkDataURI"])
        assert len(bulk[0]) == 64 * 64 * 2

        # Compressed (JPEG 2000, stored as sent): frames decompressed on request, or as stored.
        j2k = pydicom.dcmread(sorted(ct_j2k_series_dir.iterdir())[0])
        refs = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
        (raw,) = client.retrieve_instance_frames(*refs, [1], media_types=OCTETS)
        assert np.array_equal(
            np.frombuffer(raw, dtype=j2k.pixel_array.dtype).reshape(512, 512), j2k.pixel_array
        )
        (native,) = client.retrieve_instance_frames(*refs, [1], media_types=(("image/jp2", J2K_LOSSLESS),))
        assert native == next(generate_frames(j2k.PixelData, number_of_frames=1))
        as_stored = client.retrieve_instance(*refs, media_types=(("application/dicom", "*"),))
        assert str(as_stored.file_meta.TransferSyntaxUID) == J2K_LOSSLESS
        explicit = client.retrieve_instance(
            *refs, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
        )
        assert str(explicit.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
        assert np.array_equal(explicit.pixel_array, j2k.pixel_array)
        whole = client.retrieve_series(j2k.StudyInstanceUID, j2k.SeriesInstanceUID)  # no syntax named
        assert len(whole) == 20  # PS3.18's default, Explicit VR Little Endian: decompressed
        assert {str(d.file_meta.TransferSyntaxUID) for d in whole} == {"1.2.840.10008.1.2.1"}

        unauthenticated = DICOMwebClient(server.api_url + "/dicomweb")
        with pytest.raises(requests.HTTPError) as refused:
            unauthenticated.search_for_studies()
        assert refused.value.response.status_code == 401


def test_stow_answers_per_instance_and_is_idempotent(
    tmp_path: Path, ct_series: list[Path], ct_bad_uid_dir: Path
) -> None:
    with RadloopServer(_dir(tmp_path / "r"), LISTENERS) as server:
        token = server.create_token("stow")
        good = [("application/dicom", p.read_bytes()) for p in ct_series[:3]]
        bad_uids = ("application/dicom", sorted(ct_bad_uid_dir.iterdir())[0].read_bytes())
        garbage = ("application/dicom", b"not dicom at all")
        r = _stow_raw(server, token, [*good, bad_uids, garbage], "/dicomweb/aets/RADLOOP/studies")
        assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json"
        answer = pydicom.Dataset.from_json(r.json())
        assert len(answer.ReferencedSOPSequence) == 3
        assert all(
            item.RetrieveURL.startswith(server.api_url + "/dicomweb/studies/")
            for item in answer.ReferencedSOPSequence
        )
        (failed,) = answer.FailedSOPSequence  # the bad-UID file names its SOP class but has no valid UIDs
        assert failed.FailureReason == 0xC000
        assert [o.FailureReason for o in answer.OtherFailuresSequence] == [0xC000]
        assert "not a valid UID" in r.headers["warning"] and "not a DICOM PS3.10 file" in r.headers["warning"]

        again = _stow_raw(server, token, good, "/dicomweb/aets/RADLOOP/studies")
        assert again.status_code == 200  # duplicates are stored idempotently
        study = str(pydicom.dcmread(ct_series[0]).StudyInstanceUID)
        other = _stow_raw(server, token, good[:1], "/dicomweb/aets/RADLOOP/studies/1.2.3.4")
        assert other.status_code == 409
        assert pydicom.Dataset.from_json(other.json()).FailedSOPSequence[0].FailureReason == 0xA900
        assert _stow_raw(server, token, good[:1], f"/dicomweb/studies/{study}").status_code == 200

        assert _stow_raw(server, token, good, "/dicomweb/aets/NOT_OURS/studies").status_code == 404
        wrong_type = _stow_raw(server, token, good, "/dicomweb/studies", content_type="application/json")
        assert (
            wrong_type.status_code == 415 and wrong_type.headers["content-type"] == "application/problem+json"
        )
        truncated = requests.post(
            server.api_url + "/dicomweb/studies",
            data=b"--x\r\nContent-Type: a",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
            },
            timeout=30,
        )
        assert truncated.status_code == 400
        with Session(server.engine) as s:
            from radloop.core.models import Instance, Series

            assert len(s.exec(select(Instance)).all()) == 3
            (series,) = s.exec(select(Series)).all()
            assert (
                series.instance_count == 3 and series.called_ae == "RADLOOP" and series.calling_ae == "stow"
            )


def _seg_of(server: RadloopServer) -> tuple[Job, Result, pydicom.Dataset]:
    (job,) = _jobs(server)
    (result,) = [r for r in _results(server) if r.kind == "SEG"] or _results(server)
    return job, result, pydicom.dcmread(server.settings.data_dir / result.path)


@pytest.mark.slow
def test_stow_of_t1_gives_the_same_job_and_result_as_c_store(tmp_path: Path, t1_series_dir: Path) -> None:
    files = sorted(t1_series_dir.iterdir())
    with RadloopServer(_dir(tmp_path / "stow"), LISTENERS) as server:
        token = server.create_token("stow")
        client = _client(server, token, f"/dicomweb/aets/{BRAIN_AE}")
        answer = client.store_instances([pydicom.dcmread(f) for f in files])
        assert len(answer.ReferencedSOPSequence) == 170
        peers.wait_for(
            lambda: [j for j in _jobs(server) if j.state == JobState.succeeded],
            300,
            interval=0.5,
            what=f"brain job after STOW-RS (log: {server.log_path})",
        )
        stow_job, stow_result, stow_seg = _seg_of(server)
        reader = _client(server, token)
        _check_results_are_readable(reader, stow_seg, files[0])
        api = requests.get(
            f"{server.api_url}/api/v1/jobs/{stow_job.id}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert [s["operator_id"] for s in api["steps"]] == ["volume", "brain", "seg"]
        assert all(s["duration_s"] > 0 and s["state"] == "succeeded" for s in api["steps"])
        logs = requests.get(
            f"{server.api_url}/api/v1/jobs/{stow_job.id}/logs",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert logs.status_code == 200 and "(deepbet.brain_extraction) · succeeded" in logs.text

    with RadloopServer(_dir(tmp_path / "cstore"), LISTENERS) as server:
        assert peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE).returncode == 0
        peers.wait_for(
            lambda: [j for j in _jobs(server) if j.state == JobState.succeeded],
            300,
            interval=0.5,
            what=f"brain job after C-STORE (log: {server.log_path})",
        )
        store_job, store_result, store_seg = _seg_of(server)

    assert (stow_job.pipeline, stow_job.idempotency_key, stow_job.series_revision) == (
        store_job.pipeline,
        store_job.idempotency_key,
        store_job.series_revision,
    )
    assert stow_result.sop_instance_uid == store_result.sop_instance_uid
    assert stow_seg.SeriesInstanceUID == store_seg.SeriesInstanceUID
    assert np.array_equal(stow_seg.pixel_array, store_seg.pixel_array)


def _check_results_are_readable(client: DICOMwebClient, seg: pydicom.Dataset, source: Path) -> None:
    """The SEG radloop wrote is found by QIDO-RS in the source study and retrieved by WADO-RS."""
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    modalities = {s["00080060"]["Value"][0] for s in client.search_for_series(study)}
    assert modalities == {"MR", "SEG"}
    (found,) = client.search_for_series(study, search_filters={"Modality": "SEG"})
    assert found["0020000E"]["Value"] == [seg.SeriesInstanceUID]
    retrieved = client.retrieve_instance(
        study, seg.SeriesInstanceUID, seg.SOPInstanceUID, media_types=(("application/dicom", "*"),)
    )
    buffer = io.BytesIO()
    retrieved.save_as(buffer)
    assert hd.seg.segread(io.BytesIO(buffer.getvalue())).SOPInstanceUID == seg.SOPInstanceUID
    meta: list[dict[str, Any]] = client.retrieve_series_metadata(study, seg.SeriesInstanceUID)
    assert meta[0]["00080060"]["Value"] == ["SEG"]
