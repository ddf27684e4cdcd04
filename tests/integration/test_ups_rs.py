"""UPS-RS (PS3.18 §11) against a real ``radloop serve``: radloop as the IHE AIW-I Task Manager.

The client follows the standard's resource paths, media types and status codes with plain
httpx (dicomweb-client has no UPS-RS methods); the subscriber is a real WebSocket client.
The T1 study is sent with DCMTK's storescu to a listener that runs no pipeline on it, so only
the workitems ask for the brain pipeline.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlmodel import Session, select
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import peers
from radloop.core.models import Job, JobState, JobStep, Series, SeriesState
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

HOLD_AE = "RADLOOP_HOLD"  # routes MR series nowhere: its only pipeline is a CT one
DICOM_JSON = "application/dicom+json"
WORKLIST = "1.2.840.10008.5.1.4.34.5"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
STATE, EVENT_TYPE, AFFECTED_SOP = "00741000", "00001002", "00001000"


def _value(ds: dict[str, Any], tag: str) -> Any:
    return ds.get(tag, {}).get("Value", [None])[0]


def _code(value: str) -> dict[str, Any]:
    return {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080102": {"vr": "SH", "Value": ["99RADLOOP"]},
        "00080104": {"vr": "LO", "Value": [f"radloop pipeline {value}"]},
    }


def _workitem(
    study_uid: str, pipeline: str, priority: str, start: datetime | None = None
) -> list[dict[str, Any]]:
    ds: dict[str, Any] = {
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": [priority]},
        "00741204": {"vr": "LO", "Value": ["brain extraction requested by the RIS"]},
        "00404018": {"vr": "SQ", "Value": [_code(pipeline)]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [study_uid]}}]},
    }
    if start is not None:
        ds["00404005"] = {"vr": "DT", "Value": [start.strftime("%Y%m%d%H%M%S+0000")]}
    return [ds]


class Subscriber:
    """A WebSocket notification channel, read in a thread into ``reports``."""

    def __init__(self, url: str, token: str) -> None:
        self.reports: list[dict[str, Any]] = []
        channel = connect(url, additional_headers={"Authorization": f"Bearer {token}"})
        self.ws: ClientConnection = channel.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.reports.append(json.loads(message))
        except ConnectionClosed:
            pass

    def states_of(self, uid: str) -> list[str]:
        return [
            _value(r, STATE)
            for r in list(self.reports)
            if _value(r, AFFECTED_SOP) == uid and _value(r, EVENT_TYPE) == 1
        ]

    def close(self) -> None:
        self.ws.__exit__(None, None, None)
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path) -> Any:
    workdir = tmp_path_factory.mktemp("ups")
    config = {
        "dicom": {
            "listeners": [{"ae_title": HOLD_AE, "pipelines": ["ct-organ-seg"], "complete_on_release": True}]
        }
    }
    with RadloopServer(workdir, config) as srv:
        sent = peers.storescu(t1_series_dir, "127.0.0.1", srv.port, HOLD_AE)
        assert sent.returncode == 0, sent.stderr

        def _held() -> bool:
            with Session(srv.engine) as s:
                series = s.exec(select(Series)).all()
            return len(series) == 1 and series[0].state == SeriesState.complete

        peers.wait_for(_held, 60, interval=0.2, what="the T1 series complete")
        yield srv


@pytest.fixture(scope="module")
def client(server: RadloopServer) -> Any:
    token = server.create_token("ris")
    with httpx.Client(
        base_url=f"{server.api_url}/dicomweb", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        c.token = token  # type: ignore[attr-defined]
        yield c


@pytest.fixture(scope="module")
def study_uid(t1_series_dir: Path) -> str:
    first = pydicom.dcmread(next(iter(sorted(t1_series_dir.iterdir()))), stop_before_pixels=True)
    return str(first.StudyInstanceUID)


def _create(client: httpx.Client, body: list[dict[str, Any]]) -> str:
    r = client.post("/workitems", content=json.dumps(body), headers={"Content-Type": DICOM_JSON})
    assert r.status_code == 201, r.text
    location = r.headers["Content-Location"]
    assert "/dicomweb/workitems/" in location
    return location.rsplit("/", 1)[1]


def _get(client: httpx.Client, uid: str) -> dict[str, Any]:
    r = client.get(f"/workitems/{uid}", headers={"Accept": DICOM_JSON})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(DICOM_JSON)
    (ds,) = r.json()
    assert "00081195" not in ds  # the Transaction UID is the owner's secret
    return ds


def _change_state(client: httpx.Client, uid: str, state: str, transaction_uid: str | None) -> httpx.Response:
    ds: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction_uid is not None:
        ds["00081195"] = {"vr": "UI", "Value": [transaction_uid]}
    return client.put(
        f"/workitems/{uid}/state", content=json.dumps([ds]), headers={"Content-Type": DICOM_JSON}
    )


def _jobs(server: RadloopServer) -> list[Job]:
    with Session(server.engine) as s:
        return list(s.exec(select(Job).order_by(Job.id)).all())  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_workitem_runs_the_brain_pipeline_and_a_subscriber_sees_each_state(
    server: RadloopServer, client: httpx.Client, study_uid: str
) -> None:
    assert _jobs(server) == []  # the listener ran nothing on the T1
    r = client.post(f"/workitems/{WORKLIST}/subscribers/PACS_WATCH")
    assert r.status_code == 201, r.text
    channel = r.headers["Content-Location"]
    assert channel.startswith("ws://") and channel.endswith("/dicomweb/subscribers/PACS_WATCH")
    watcher = Subscriber(channel, client.token)  # type: ignore[attr-defined]
    try:
        uid = _create(client, _workitem(study_uid, "brain-extraction", "HIGH"))
        (job,) = _jobs(server)
        assert job.pipeline == "brain-extraction" and job.priority == "high"

        done = peers.wait_for(
            lambda: (ds := _get(client, uid)) and _value(ds, STATE) in ("COMPLETED", "CANCELED") and ds,
            240,
            interval=1.0,
            what=f"workitem COMPLETED (log: {server.log_path})",
        )
        assert _value(done, STATE) == "COMPLETED", _jobs(server)[0].error
        (performed,) = done["00741216"]["Value"]
        outputs = performed["00404033"]["Value"]
        refs = [ref for item in outputs for ref in item["00081199"]["Value"]]
        segs = [ref for ref in refs if _value(ref, "00081150") == SEG_SOP_CLASS]
        assert len(segs) == 1 and all(_value(item, "0020000D") == study_uid for item in outputs)

        peers.wait_for(lambda: len(watcher.states_of(uid)) >= 3, 10, what="three state reports")
        assert watcher.states_of(uid) == ["SCHEDULED", "IN PROGRESS", "COMPLETED"]
        # radloop's workers own it: a client's Transaction UID is not the owner's
        r = _change_state(client, uid, "CANCELED", "2.25.1")
        assert r.status_code == 409 and "inconsistent" in r.headers["Warning"]
    finally:
        watcher.close()

    r = client.get("/workitems", params={"InputInformationSequence.StudyInstanceUID": study_uid})
    assert r.status_code == 200 and [_value(ds, "00080018") for ds in r.json()] == [uid]
    assert client.delete(f"/workitems/{WORKLIST}/subscribers/PACS_WATCH").status_code == 200
    assert client.delete(f"/workitems/{WORKLIST}/subscribers/PACS_WATCH").status_code == 404


def test_an_external_claimant_completes_a_workitem_with_its_transaction_uid(
    server: RadloopServer, client: httpx.Client, study_uid: str
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)  # held in the queue: no local worker may take it first
    uid = _create(client, _workitem(study_uid, "brain-extraction", "MEDIUM", start=later))
    assert _value(_get(client, uid), STATE) == "SCHEDULED"
    r = client.post(f"/workitems/{uid}/subscribers/AI_ENGINE")
    assert r.status_code == 201
    engine = Subscriber(r.headers["Content-Location"], client.token)  # type: ignore[attr-defined]
    try:
        mine = "2.25.271828182845904523536028747135266249775"
        assert _change_state(client, uid, "COMPLETED", mine).status_code == 409  # not claimed yet
        assert _change_state(client, uid, "IN PROGRESS", mine).status_code == 200
        assert _value(_get(client, uid), STATE) == "IN PROGRESS"
        job = _jobs(server)[-1]
        assert job.state == JobState.running and job.leased_by == f"ups:{uid}"

        r = _change_state(client, uid, "IN PROGRESS", "2.25.42")  # a second claim
        assert r.status_code == 409
        r = _change_state(client, uid, "COMPLETED", "2.25.42")  # wrong Transaction UID
        assert r.status_code == 400 and r.headers["Warning"].endswith("The Transaction UID is incorrect.")
        r = _change_state(client, uid, "COMPLETED", None)
        assert r.status_code == 400 and r.headers["Warning"].endswith("The Transaction UID is missing.")

        update = [
            {"00741216": {"vr": "SQ", "Value": [{"00404050": {"vr": "DT", "Value": ["20261206120000"]}}]}}
        ]
        r = client.post(f"/workitems/{uid}", params={"transaction": "2.25.42"}, content=json.dumps(update),
                        headers={"Content-Type": DICOM_JSON})  # fmt: skip
        assert r.status_code == 400
        r = client.post(f"/workitems/{uid}", params={"transaction": mine}, content=json.dumps(update),
                        headers={"Content-Type": DICOM_JSON})  # fmt: skip
        assert r.status_code == 200, r.text

        assert _change_state(client, uid, "COMPLETED", mine).status_code == 200
        r = _change_state(client, uid, "COMPLETED", mine)
        assert r.status_code == 200 and "already in the requested state of COMPLETED" in r.headers["Warning"]
        done = _get(client, uid)
        assert _value(done, STATE) == "COMPLETED"
        assert _value(done["00741216"]["Value"][0], "00404050") == "20261206120000"
        job = _jobs(server)[-1]
        assert job.state == JobState.succeeded
        with Session(server.engine) as s:  # it never ran here
            assert s.exec(select(JobStep).where(JobStep.job_id == job.id)).all() == []
        peers.wait_for(lambda: engine.states_of(uid)[-2:] == ["IN PROGRESS", "COMPLETED"], 10, what="reports")
    finally:
        engine.close()


def test_a_cancel_request_cancels_a_scheduled_workitem_and_its_job(
    server: RadloopServer, client: httpx.Client, study_uid: str
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    uid = _create(client, _workitem(study_uid, "brain-extraction", "LOW", start=later))
    r = client.post(f"/workitems/{uid}/cancelrequest")
    assert r.status_code == 202
    peers.wait_for(lambda: _value(_get(client, uid), STATE) == "CANCELED", 10, what="CANCELED")
    assert _jobs(server)[-1].state == JobState.cancelled
    assert client.post(f"/workitems/{uid}/cancelrequest").headers["Warning"].endswith("state of CANCELED.")
    r = client.get("/workitems", params={"ProcedureStepState": "CANCELED"})
    assert [_value(ds, "00080018") for ds in r.json()] == [uid]
    assert client.get("/workitems/2.25.404").status_code == 404
    bad = client.post("/workitems", content=json.dumps(_workitem("2.25.9", "brain-extraction", "LOW")),
                      headers={"Content-Type": DICOM_JSON})  # fmt: skip
    assert bad.status_code == 400 and "not in radloop" in bad.text


def test_pynetdicom_drives_the_same_worklist_over_dimse(
    server: RadloopServer, client: httpx.Client, study_uid: str
) -> None:
    from pydicom import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import UnifiedProcedureStepPull, UnifiedProcedureStepPush  # type: ignore[attr-defined]

    ds = Dataset.from_json(
        _workitem(study_uid, "brain-extraction", "LOW", datetime.now(UTC) + timedelta(days=1))[0]
    )
    uid, mine = "2.25.31415926535897932384626433832795028841", "2.25.2718281828459045"
    scu = AE(ae_title="AI_ENGINE")
    scu.add_requested_context(UnifiedProcedureStepPush)
    scu.add_requested_context(UnifiedProcedureStepPull)
    assoc = scu.associate("127.0.0.1", server.port, ae_title=HOLD_AE)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_create(ds, UnifiedProcedureStepPush, uid)
        assert status.Status == 0x0000
        assert _value(_get(client, uid), STATE) == "SCHEDULED"  # the same workitem over UPS-RS

        def action(state: str, transaction_uid: str) -> int:
            info = Dataset()
            info.ProcedureStepState, info.TransactionUID = state, transaction_uid
            status, _ = assoc.send_n_action(info, 1, UnifiedProcedureStepPull, uid)
            return int(status.Status)

        assert action("IN PROGRESS", mine) == 0x0000
        assert action("COMPLETED", "2.25.42") == 0xC301  # The correct Transaction UID was not provided
        assert action("COMPLETED", mine) == 0x0000
        status, got = assoc.send_n_get([0x00741000], UnifiedProcedureStepPull, uid)
        assert status.Status == 0x0000 and got.ProcedureStepState == "COMPLETED"
    finally:
        assoc.release()
    assert _jobs(server)[-1].state == JobState.succeeded
