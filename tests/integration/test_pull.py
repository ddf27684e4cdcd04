"""Pulling from a PACS (Orthanc with its DICOMweb plugin) into a real ``radloop serve``.

* by accession number over DICOMweb (QIDO-RS + WADO-RS) and over DIMSE (C-FIND + C-MOVE to
  radloop's own AE): the T1 study runs through the brain pipeline and its SEG goes back;
* C-GET (the study comes back on radloop's own association);
* scheduled polling with a filter: a newly stored study is found within one poll interval,
  and never fetched again, by the next polls or after a restart.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from sqlmodel import Session, select

import peers
from radloop.core.models import Job, JobState, PollCursor, PulledStudy, PullState, Series
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

BRAIN_AE = "RADLOOP_BRAIN"
ACCESSION = "T1PULL0001"


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def t1_with_accession(t1_series_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared T1 series with an AccessionNumber (the published files have none)."""
    target = tmp_path_factory.mktemp("t1_accession")
    for f in sorted(t1_series_dir.iterdir()):
        ds = pydicom.dcmread(f)
        ds.AccessionNumber = ACCESSION
        ds.save_as(target / f.name)
    return target


def _config(orthanc: peers.OrthancServer, **sources: Any) -> dict[str, Any]:
    return {
        "dicom": {
            "listeners": [
                {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60},
                {"ae_title": "RADLOOP", "pipelines": ["brain-extraction"], "quiet_period_s": 60},
            ]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
        "sources": [{"name": name, **cfg} for name, cfg in sources.items()],
    }


def _web(orthanc: peers.OrthancServer, listener: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dicomweb",
        "url": orthanc.dicomweb_url,
        "listener_ae_title": listener,
        "timeout_s": 60,
        **extra,
    }


def _dimse(orthanc: peers.OrthancServer, listener: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dimse",
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "ae_title": orthanc.aet,
        "listener_ae_title": listener,
        "timeout_s": 60,
        **extra,
    }


def _segs(orthanc: peers.OrthancServer) -> list[str]:
    return [i for i in orthanc.instances() if orthanc.instance_tags(i).get("Modality") == "SEG"]


def _rows(server: RadloopServer, model: Any) -> list[Any]:
    with Session(server.engine) as s:
        return list(s.exec(select(model)).all())


def _pull_and_wait_for_seg(server: RadloopServer, orthanc: peers.OrthancServer, source: str) -> None:
    done = server.cli("pull", "--source", source, "--accession", ACCESSION, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)
    assert row["state"] == "done" and row["instances"] == 170 and row["accession_number"] == ACCESSION
    peers.wait_for(
        lambda: _segs(orthanc), 300, interval=0.5, what=f"SEG back in Orthanc (log {server.log_path})"
    )
    (job,) = _rows(server, Job)
    assert job.state == JobState.succeeded and job.pipeline == "brain-extraction"
    (series,) = [s for s in _rows(server, Series) if s.modality == "MR"]
    assert series.instance_count == 170 and series.called_ae == BRAIN_AE


@pytest.mark.slow
def test_pull_by_accession_over_dicomweb_and_c_move_runs_the_pipeline_and_sends_results_back(
    orthanc_clean: peers.OrthancServer, t1_with_accession: Path, tmp_path: Path
) -> None:
    orthanc = orthanc_clean
    assert peers.storescu(t1_with_accession, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
    sources = {"pacs-web": _web(orthanc, BRAIN_AE), "pacs-dimse": _dimse(orthanc, BRAIN_AE)}

    with RadloopServer(_dir(tmp_path / "web"), _config(orthanc, **sources)) as server:
        _pull_and_wait_for_seg(server, orthanc, "pacs-web")
        (pulled,) = _rows(server, PulledStudy)
        assert (pulled.source, pulled.trigger, pulled.retrievals) == ("pacs-web", "manual", 1)
    for seg in _segs(orthanc):  # the next pull must retrieve the T1 study only
        orthanc.request("DELETE", f"/instances/{seg}")

    with RadloopServer(_dir(tmp_path / "move"), _config(orthanc, **sources)) as server:
        orthanc.add_modality("radloop", BRAIN_AE, "127.0.0.1", server.port)
        _pull_and_wait_for_seg(server, orthanc, "pacs-dimse")
        assert f"association released by {BRAIN_AE}: 1 series" in server.log_text()  # Orthanc's C-MOVE
        (series,) = [s for s in _rows(server, Series) if s.modality == "MR"]
        assert series.calling_ae == orthanc.aet
        missing = server.cli("pull", "--source", "pacs-dimse", "--accession", "NO-SUCH-ACCESSION")
        assert missing.returncode == 2 and "no study matching" in missing.stderr


def test_pull_by_c_get_and_over_the_api(
    orthanc_clean: peers.OrthancServer, synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    orthanc = orthanc_clean
    assert peers.storescu(synthetic_ct_dir, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
    study = str(
        pydicom.dcmread(sorted(synthetic_ct_dir.iterdir())[0], stop_before_pixels=True).StudyInstanceUID
    )
    sources = {"pacs-get": _dimse(orthanc, "RADLOOP", retrieve="c-get", calling_ae_title="RADLOOP_GET")}
    with RadloopServer(_dir(tmp_path / "get"), _config(orthanc, **sources)) as server:
        orthanc.add_modality("radloop-get", "RADLOOP_GET", "127.0.0.1", server.port)
        token = server.create_token("puller")
        r = requests.post(
            f"{server.api_url}/api/v1/pulls",
            timeout=120,
            headers={"Authorization": f"Bearer {token}"},
            json={"source": "pacs-get", "study_instance_uid": study},
        )
        assert r.status_code == 200, r.text
        (row,) = r.json()
        assert row["state"] == "done" and row["instances"] == 16
        (series,) = _rows(server, Series)
        assert series.instance_count == 16 and series.state == "complete" and series.calling_ae == orthanc.aet
        assert series.routing_status == "unmatched"  # a CT on the brain pipeline's AE: routed, explained
        listed = requests.get(
            f"{server.api_url}/api/v1/pulls", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).json()
        assert [p["study_instance_uid"] for p in listed] == [study]
        unknown = requests.post(
            f"{server.api_url}/api/v1/pulls",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
            json={"source": "nope", "accession_number": "x"},
        )
        assert unknown.status_code == 404


def _today_ct(folder: Path, study_date: str, seed: int) -> Path:
    files = peers.make_synthetic_ct_series(folder, n=6, rows=64, cols=64, seed=seed)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.AccessionNumber = f"POLL{seed:04d}"
        ds.save_as(f)
    return folder


def _cursor(server: RadloopServer) -> PollCursor | None:
    rows = _rows(server, PollCursor)
    return rows[0] if rows else None


def _polls(server: RadloopServer) -> int:
    cursor = _cursor(server)
    return cursor.polls if cursor else 0


def test_polling_finds_a_new_study_once_and_never_again(
    orthanc_clean: peers.OrthancServer, tmp_path: Path
) -> None:
    orthanc = orthanc_clean
    interval = 3.0
    today = datetime.now().astimezone().strftime("%Y%m%d")
    new_ct = _today_ct(tmp_path / "new", today, seed=11)
    old_ct = _today_ct(tmp_path / "old", "20200101", seed=12)  # outside the date window: never pulled
    poll = {"enabled": True, "interval_s": interval, "modalities": ["CT"], "initial_lookback_days": 1}
    server = RadloopServer(
        _dir(tmp_path / "poll"), _config(orthanc, **{"pacs-web": _web(orthanc, "RADLOOP", poll=poll)})
    )
    server.start()
    try:
        peers.wait_for(lambda: _polls(server) >= 1, 20, what="first poll")
        assert peers.storescu(old_ct, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
        assert peers.storescu(new_ct, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
        stored_at = time.monotonic()
        pulled = peers.wait_for(
            lambda: [p for p in _rows(server, PulledStudy) if p.state == PullState.done],
            interval + 15,
            interval=0.2,
            what="the new study pulled by polling",
        )
        found_after = time.monotonic() - stored_at
        assert found_after <= interval + 10, found_after
        (row,) = pulled
        assert (row.trigger, row.instances, row.retrievals, row.study_date) == ("poll", 6, 1, today)
        (series,) = _rows(server, Series)
        first_received = series.last_received_at

        polls = _polls(server)
        peers.wait_for(lambda: _polls(server) >= polls + 2, 3 * interval + 10, what="two more polls")
        server.stop()
        server.start()
        polls = _polls(server)
        peers.wait_for(lambda: _polls(server) >= polls + 2, 3 * interval + 20, what="two polls after restart")
    finally:
        server.stop()
    (row,) = _rows(server, PulledStudy)
    assert row.retrievals == 1  # never fetched again: not by later polls, not after the restart
    (series,) = _rows(server, Series)
    assert series.last_received_at == first_received and series.instance_count == 6
    cursor = _cursor(server)
    assert cursor is not None and cursor.since_date == today and cursor.last_error == ""
    listing = server.cli("pulls", "sources", "--json")
    assert json.loads(listing.stdout)[0]["cursor"]["since_date"] == today
