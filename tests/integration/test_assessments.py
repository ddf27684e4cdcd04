"""IHE AIRA end to end, no browser: three AI results on the real T1 (SEG + measurement SR each),
reviewed through the review API (accept, reject with a reason, edit) → three verified
assessment SRs, sent by the outbox to a real Orthanc, found there in the source study and read
back with highdicom's SR classes, each referencing the AI result it assesses; with
`review.iocm_rejection_notes` on, the rejection also sends an IOCM rejection KOS.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlmodel import Session, select

import peers
import review_env
from radloop.api.app import create_app
from radloop.core.db import session_scope
from radloop.core.models import Delivery, DeliveryState, Result, Review
from radloop.pipelines.ports import LabelMap
from radloop.pipelines.writers import ihe_codes
from radloop.pipelines.writers.equipment import algorithm_device_uid, algorithm_equipment
from radloop.pipelines.writers.sr import ReportSeries, write_volume_report
from radloop.runtime import Runtime
from radloop.viewer_launch.conversion import nifti_affine
from radloop.viewer_launch.signing import launch_key, sign_launch_query

pytestmark = [pytest.mark.peers]

HEADERS = {"X-Radloop-Review": "1"}
REVIEWER = "dr.aira"


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, t1_series_dir: Path, orthanc: peers.OrthancServer
) -> review_env.ReviewEnv:
    """Three AI SEG results (one job each) with a measurement SR each; 'pacs' is the Orthanc."""
    orthanc.clear()
    pacs = orthanc.destination()
    env = review_env.make_review_env(
        tmp_path_factory.mktemp("aira"),
        t1_series_dir,
        n_results=3,
        secret_key="a" * 40,
        destinations=[pacs],
        review={"iocm_rejection_notes": True},
    )
    for result_id, labels in env.results.items():
        _add_measurement_report(env, result_id, labels)
    return env


def _add_measurement_report(env: review_env.ReviewEnv, seg_result_id: int, labels: np.ndarray) -> None:
    """The job's TID 1500 SR on its SEG, as the brain pipeline writes it (a result row, kind SR)."""
    with session_scope(env.engine) as s:
        seg_result = s.get(Result, seg_result_id)
        assert seg_result is not None
        seg = pydicom.dcmread(env.settings.data_dir / seg_result.path, stop_before_pixels=True)
        series = ReportSeries(generate_uid(), generate_uid(), 9903, "AI measurements")
        folder = env.settings.data_dir / "results" / env.study_uid / series.series_instance_uid
        labelmap = LabelMap(labels, env.volume, (review_env.BRAIN,), review_env.MODEL)
        path = write_volume_report(labelmap, seg, folder, series)
        s.add(
            Result(
                job_id=seg_result.job_id,
                kind="SR",
                sop_class_uid=str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID),
                sop_instance_uid=series.sop_instance_uid,
                series_instance_uid=series.series_instance_uid,
                study_instance_uid=env.study_uid,
                path=str(path.relative_to(env.settings.data_dir)),
            )
        )


@pytest.fixture
def client(env: review_env.ReviewEnv) -> Iterator[TestClient]:
    with TestClient(create_app(env.settings), base_url="http://127.0.0.1", follow_redirects=False) as c:
        query = sign_launch_query(launch_key(env.settings), issued_at=int(time.time()), reviewer=REVIEWER)
        assert c.get(f"/review/launch?{query}").status_code == 303  # a worklist session: any result
        yield c


def _edit_body(env: review_env.ReviewEnv, result_id: int) -> bytes:
    final = env.results[result_id].copy()
    final[85, 10:14, 10:15] = 1
    drawing = nib.Nifti1Image(final.transpose(2, 1, 0), nifti_affine(env.volume))
    drawing.set_data_dtype(np.uint8)
    return gzip.compress(drawing.to_bytes())


def _job_uids(env: review_env.ReviewEnv, result_id: int) -> dict[str, str]:
    """SOP Instance UIDs of the AI SEG and SR of the result's job."""
    with Session(env.engine) as s:
        seg = s.get(Result, result_id)
        assert seg is not None
        sr = s.exec(select(Result).where(Result.job_id == seg.job_id, Result.kind == "SR")).first()
        assert sr is not None
        return {"SEG": seg.sop_instance_uid, "SR": sr.sop_instance_uid}


def test_accept_reject_edit_become_assessment_srs_in_orthanc(
    client: TestClient, env: review_env.ReviewEnv, orthanc: peers.OrthancServer, tmp_path: Path
) -> None:
    accept_id, reject_id, edit_id = sorted(env.results)
    expected = {rid: _job_uids(env, rid) for rid in (accept_id, reject_id, edit_id)}
    started = time.perf_counter()
    rows = {
        accept_id: client.post(
            f"/review/api/results/{accept_id}/decision", headers=HEADERS, json={"decision": "accepted"}
        ),
        reject_id: client.post(
            f"/review/api/results/{reject_id}/decision",
            headers=HEADERS,
            json={"decision": "rejected", "reason": "mask covers the skull"},
        ),
        edit_id: client.post(
            f"/review/api/results/{edit_id}/edit", headers=HEADERS, content=_edit_body(env, edit_id)
        ),
    }
    assert all(r.status_code == 200 for r in rows.values()), {k: r.text for k, r in rows.items()}
    edited_uid = rows[edit_id].json()["edited_seg"]["sop_instance_uid"]
    with Session(env.engine) as s:
        reviews = {r.result_id: r for r in s.exec(select(Review)).all()}
        assessments = {rid: s.get(Result, reviews[rid].assessment_result_id) for rid in expected}
        deliveries = s.exec(
            select(Delivery).where(Delivery.result_id.in_([a.id for a in assessments.values()]))
        ).all()  # type: ignore[union-attr,attr-defined]
    assert sorted(d.destination for d in deliveries) == ["pacs"] * 3

    outbox = Runtime.build(env.settings, migrate=False).outbox
    peers.wait_for(lambda: outbox.tick() == 0 and _all_sent(env), 60, interval=0.5, what="assessments sent")
    print(f"\n3 decisions → 3 assessment SRs sent to Orthanc in {time.perf_counter() - started:.2f} s")

    query = {"StudyInstanceUID": env.study_uid, "SeriesDescription": "AI result assessment"}
    found = json.loads(
        orthanc.request("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": query}).encode())
    )
    assert len(found) == 3, found
    in_orthanc = {}
    for instance_id in found:
        path = tmp_path / f"{instance_id}.dcm"
        path.write_bytes(orthanc.instance_file(instance_id))
        sr = hd.sr.srread(path)
        assert isinstance(sr, hd.sr.ComprehensiveSR)
        in_orthanc[str(sr.SOPInstanceUID)] = sr
    decisions = {accept_id: "accepted", reject_id: "rejected", edit_id: "edited"}
    for rid, assessment in assessments.items():
        assert assessment is not None and assessment.study_instance_uid == env.study_uid
        sr = in_orthanc[assessment.sop_instance_uid]
        assert sr.StudyInstanceUID == env.study_uid
        assert (sr.VerificationFlag, str(sr.VerifyingObserverSequence[0].VerifyingObserverName)) == (
            "VERIFIED",
            f"{REVIEWER}^",
        )
        (equipment,) = algorithm_equipment(sr)
        assert equipment.DeviceUID == algorithm_device_uid(review_env.MODEL)
        items = list(sr.ContentSequence)
        code = next(
            i
            for i in items
            if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == ihe_codes.ASSESSMENT.value
        )
        assert code.ConceptCodeSequence[0].CodeValue == ihe_codes.ASSESSMENT_CODES[decisions[rid]].value
        refs = _references(items)
        assert refs[ihe_codes.ASSESSED_RESULT.value] == {
            (expected[rid]["SEG"], 1),
            (expected[rid]["SR"], None),
        }
        modified = refs.get(ihe_codes.MODIFIED_RESULT.value)
        assert modified == ({(edited_uid, 1)} if rid == edit_id else None)
    reason = next(
        i
        for i in in_orthanc[assessments[reject_id].sop_instance_uid].ContentSequence
        if i.ValueType == "TEXT"
    )  # type: ignore[union-attr]
    assert reason.TextValue == "mask covers the skull"
    _check_rejection_note(env, orthanc, expected[reject_id], tmp_path)


def _check_rejection_note(
    env: review_env.ReviewEnv, orthanc: peers.OrthancServer, rejected: dict[str, str], tmp_path: Path
) -> None:
    """The optional IOCM KOS of the rejected result: in Orthanc, conformant, naming its SEG and SR."""
    query = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": env.study_uid, "Modality": "KO"}})
    (instance_id,) = json.loads(orthanc.request("POST", "/tools/find", query.encode()))
    path = tmp_path / "kos.dcm"
    path.write_bytes(orthanc.instance_file(instance_id))
    assert peers.dciodvfy(path) == [], peers.dciodvfy_report(path)
    kos = pydicom.dcmread(path)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    referenced = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in kos.ContentSequence
        if i.ValueType in ("IMAGE", "COMPOSITE")
    }
    assert referenced == set(rejected.values())


def _references(items: list[pydicom.Dataset]) -> dict[str, set[tuple[str, int | None]]]:
    """Concept code → {(referenced SOP Instance UID, segment number or None)} of IMAGE/COMPOSITE items."""
    out: dict[str, set[tuple[str, int | None]]] = {}
    for item in items:
        if item.ValueType not in ("IMAGE", "COMPOSITE"):
            continue
        ref = item.ReferencedSOPSequence[0]
        segment = int(ref.ReferencedSegmentNumber) if "ReferencedSegmentNumber" in ref else None
        out.setdefault(str(item.ConceptNameCodeSequence[0].CodeValue), set()).add(
            (str(ref.ReferencedSOPInstanceUID), segment)
        )
    return out


def _all_sent(env: review_env.ReviewEnv) -> bool:
    with Session(env.engine) as s:
        rows = s.exec(select(Delivery)).all()
    return all(d.state == DeliveryState.sent for d in rows)
