"""The prostate pipeline end to end: an axial T2 MR series sent to ``RADLOOP_PROSTATE`` of a real
``radloop serve`` → the TAPS network (from the lavlab-taps wheel, ONNX Runtime in process) →
SEG + SR delivered by C-STORE to a real Orthanc, both free of dciodvfy errors; the real T1 brain
sent to the same AE → a visible non-match naming the rule it breaks.

No real prostate MR is in the test data: the series is the synthetic T2-like pelvis of
``helpers_prostate``. The network finds no prostate in it (its probability stays below 0.01), so
the reference pipeline's job fails with the reason ("result implausible: no prostate found"),
and a copy of the reference pipeline with a lower threshold and ``on_implausible: flag``, run on
the same series, writes the SEG and an SR that flags the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.filebase import DicomBytesIO
from sqlmodel import Session, select

import peers
from helpers_prostate import pelvis, pelvis_affine, write_mr_series
from radloop.core.models import Job, JobState, Result, Series
from radloop.pipelines.writers.ihe_codes import RESULT_IMPLAUSIBLE
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

AE = "RADLOOP_PROSTATE"
REFERENCE = Path(__file__).resolve().parents[2] / "src/radloop/pipelines/reference/prostate-seg.yaml"
VARIANT = "prostate-seg-flagged"
TIMEOUT_S = 600.0


def _variant(folder: Path) -> Path:  # returns the folder, for pipelines.dirs
    """The reference pipeline with threshold 0.002 and on_implausible: flag, under another name."""
    spec = yaml.safe_load(REFERENCE.read_text())
    spec["name"] = VARIANT
    for step in spec["operators"]:
        if step["use"] == "taps.prostate_segmentation":
            step["with"] = {**step.get("with", {}), "threshold": 0.002, "on_implausible": "flag"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{VARIANT}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def _config(orthanc: peers.OrthancServer, pipelines_dir: Path) -> dict[str, Any]:
    return {
        "dicom": {
            "listeners": [{"ae_title": AE, "pipelines": ["prostate-seg", VARIANT], "quiet_period_s": 60}]
        },
        "pipelines": {"dirs": [str(pipelines_dir)], "destinations": {VARIANT: ["pacs"]}},
        "destinations": [
            {
                "kind": "dicom",
                "name": "pacs",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "ae_title": orthanc.aet,
            }
        ],
    }


def _finished(server: RadloopServer) -> list[Job] | None:
    with Session(server.engine) as s:
        jobs = list(s.exec(select(Job)).all())
    done = [j for j in jobs if j.state in (JobState.succeeded, JobState.failed)]
    return jobs if len(jobs) == 2 and len(done) == 2 else None


def _fetch(orthanc: peers.OrthancServer, sop_uid: str, path: Path) -> pydicom.Dataset:
    found = json.loads(orthanc.request("POST", "/tools/lookup", body=sop_uid.encode()))
    (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
    data = orthanc.instance_file(instance)
    path.write_bytes(data)
    return pydicom.dcmread(DicomBytesIO(data))


def _codes(sequence: Any) -> list[tuple[str, str]]:
    """(concept name, value) of every CODE item in an SR content tree."""
    out = []
    for item in sequence:
        if item.ValueType == "CODE":
            out.append((item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue))
        out.extend(_codes(getattr(item, "ContentSequence", [])))
    return out


def test_t2_series_to_seg_and_sr_in_orthanc_and_t1_brain_not_matched(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    series_dir = tmp_path / "t2"
    write_mr_series(series_dir, pelvis(), pelvis_affine(), series_description="t2_tse_tra")
    (tmp_path / "radloop").mkdir()
    config = _config(orthanc_clean, _variant(tmp_path / "pipelines"))
    server = RadloopServer(tmp_path / "radloop", config)
    server.start(timeout=300)  # generous: workers load their models before "ready"
    try:
        _run(server, orthanc_clean, series_dir, t1_series_dir, tmp_path)
    finally:
        server.stop()


def _run(
    server: RadloopServer,
    orthanc_clean: peers.OrthancServer,
    series_dir: Path,
    t1_series_dir: Path,
    tmp_path: Path,
) -> None:
    sent = peers.storescu(series_dir, "127.0.0.1", server.port, AE)
    assert sent.returncode == 0, sent.stderr
    jobs = peers.wait_for(
        lambda: _finished(server), TIMEOUT_S, interval=1.0, what=f"two prostate jobs ({server.log_path})"
    )
    by_pipeline = {j.pipeline: j for j in jobs}
    reference = by_pipeline["prostate-seg"]
    assert reference.state == JobState.failed
    assert reference.error.startswith("result implausible: no prostate found (0.0 mL)"), reference.error
    assert reference.attempts == 1  # bad input fails at once, no retries
    flagged = by_pipeline[VARIANT]
    assert flagged.state == JobState.succeeded, flagged.error

    with Session(server.engine) as s:
        results = {r.kind: r.sop_instance_uid for r in s.exec(select(Result)).all()}
    assert sorted(results) == ["SEG", "SR"]
    peers.wait_for(
        lambda: len(orthanc_clean.instances()) >= 2 or None,
        120,
        what="SEG and SR in Orthanc",
    )
    seg = _fetch(orthanc_clean, results["SEG"], tmp_path / "seg.dcm")
    sr = _fetch(orthanc_clean, results["SR"], tmp_path / "sr.dcm")
    for path in (tmp_path / "seg.dcm", tmp_path / "sr.dcm"):
        errors = peers.dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Prostate"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"
    assert ("RL-QC-100", RESULT_IMPLAUSIBLE.value) in _codes(sr.ContentSequence)
    shown = server.cli("jobs", "show", str(flagged.id), "--json")
    assert shown.returncode == 0, shown.stderr
    step_logs = {step["operator_id"]: step["log"] for step in json.loads(shown.stdout)["steps"]}
    assert "result implausible: " in step_logs["prostate"], step_logs

    # The real sagittal T1 brain on the prostate AE: unmatched, with the rule it breaks.
    sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, AE)
    assert sent.returncode == 0, sent.stderr
    with Session(server.engine) as s:
        t1 = peers.wait_for(
            lambda: s.exec(select(Series).where(Series.routing_status == "unmatched")).first(),
            120,
            what="T1 series marked unmatched",
        )
        assert "SeriesDescription 'ADNI_Sag3D MPRAGE' does not match" in t1.routing_note, t1.routing_note
        assert len(s.exec(select(Job)).all()) == 2  # no job for the T1
    listing = server.cli("studies", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    notes = [x["routing_note"] for row in json.loads(listing.stdout) for x in row["series"]]
    assert any("prostate-seg: SeriesDescription 'ADNI_Sag3D MPRAGE'" in n for n in notes), notes
