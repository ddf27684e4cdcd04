"""Study-level pipelines in a real ``radloop serve``: several series of one study in one job, and
the patient's prior study found at the PACS (Orthanc) and compared.

* two series of one study in one association → one job with both series by input name;
  the second series missing → the study is ``unmatched``, naming the input that found nothing;
  the second series sent late, within ``wait_s`` → still one job;
* ``brain-volume-change``: Orthanc holds the patient's prior T1 (a year earlier, every spacing
  × 1.02, so its brain is 1.02³ ≈ 6.1 % larger in mL); sending the current T1 makes radloop find
  the prior by C-FIND, fetch it by C-MOVE, run deepbet on both and send a SEG and an SR with both
  volumes and the change back to Orthanc.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlmodel import Session, select

import peers
from helpers_study import volume_ratio, write_derived_series, write_prior
from radloop.core.models import Job, JobInput, JobState, JobStep, Series, StudyTrigger
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

TWO_SERIES = """\
name: {name}
version: "1"
trigger: study
wait_s: {wait_s}
inputs:
  t1: {{modality: [CT], series_description: "(?i)^synthetic ct", min_instances: 8}}
  contrast: {{modality: [CT], series_description: "(?i)contrast"}}
operators:
  - id: t1-volume
    use: dicom.series_to_volume
    inputs: {{series: input.t1}}
  - id: contrast-volume
    use: dicom.series_to_volume
    inputs: {{series: input.contrast}}
"""


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rows(server: RadloopServer, model: Any) -> list[Any]:
    with Session(server.engine) as s:
        return list(s.exec(select(model)).all())


def _trigger(server: RadloopServer, study_uid: str) -> StudyTrigger | None:
    rows = [t for t in _rows(server, StudyTrigger) if t.study_instance_uid == study_uid]
    return rows[0] if rows else None


def _study_uid(folder: Path) -> str:
    return str(pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True).StudyInstanceUID)


def _send(server: RadloopServer, ae: str, *folders: Path) -> None:
    done = peers.storescu(list(folders), "127.0.0.1", server.port, ae)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_series_study_makes_one_job_or_names_the_missing_input(
    synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "now.yaml").write_text(TWO_SERIES.format(name="two-series", wait_s=0))
    (pipelines / "wait.yaml").write_text(TWO_SERIES.format(name="two-series-wait", wait_s=8))
    config = {
        "dicom": {
            "listeners": [
                {"ae_title": "STUDY_NOW", "pipelines": ["two-series"], "quiet_period_s": 60},
                {"ae_title": "STUDY_WAIT", "pipelines": ["two-series-wait"], "quiet_period_s": 60},
            ]
        },
        "pipelines": {"dirs": [str(pipelines)], "include_reference": False},
    }
    studies = {}
    for case in ("together", "missing", "late"):  # one study each, the same patient
        t1 = write_prior(synthetic_ct_dir, tmp_path / case / "t1", "20240101")
        studies[case] = (t1, write_derived_series(t1, tmp_path / case / "contrast", "Post CONTRAST"))
    with RadloopServer(_dir(tmp_path / "server"), config) as server:
        # both series in one association → one job, both series by name
        t1, contrast = studies["together"]
        _send(server, "STUDY_NOW", t1, contrast)
        (job,) = peers.wait_for(
            lambda: [j for j in _rows(server, Job) if j.state == JobState.succeeded], 60, what="the study job"
        )
        assert job.pipeline == "two-series" and job.study_instance_uid == _study_uid(t1)
        inputs = {i.name: i.series_instance_uid for i in _rows(server, JobInput) if i.job_id == job.id}
        uids = {
            n: str(pydicom.dcmread(next(f.iterdir())).SeriesInstanceUID)
            for n, f in (("t1", t1), ("contrast", contrast))
        }
        assert inputs == uids
        steps = {s.operator_id: s.state for s in _rows(server, JobStep) if s.job_id == job.id}
        assert steps == {"t1-volume": "succeeded", "contrast-volume": "succeeded"}

        # the second series missing → unmatched, naming the input
        t1, _ = studies["missing"]
        _send(server, "STUDY_NOW", t1)
        trigger = peers.wait_for(lambda: _trigger(server, _study_uid(t1)), 30, what="the study outcome")
        assert trigger.state == "unmatched", trigger
        assert "input 'contrast' found nothing" in trigger.note
        assert "SeriesDescription 'Synthetic CT phantom' does not match /(?i)contrast/" in trigger.note
        assert len(_rows(server, Job)) == 1

        # the second series late, within wait_s → one job
        t1, contrast = studies["late"]
        _send(server, "STUDY_WAIT", t1)
        waiting = peers.wait_for(lambda: _trigger(server, _study_uid(t1)), 30, what="the study waiting")
        assert waiting.state == "waiting" and "contrast" in waiting.note
        _send(server, "STUDY_WAIT", contrast)
        peers.wait_for(lambda: len(_rows(server, Job)) == 2, 30, what="the late study's job")
        late = _trigger(server, _study_uid(t1))
        assert late is not None and late.deadline is not None
        peers.wait_for(lambda: datetime.now(late.deadline.tzinfo) > late.deadline + timedelta(seconds=2), 20)
        jobs = [j for j in _rows(server, Job) if j.study_instance_uid == _study_uid(t1)]
        assert len(jobs) == 1 and jobs[0].pipeline == "two-series-wait"
        final = _trigger(server, _study_uid(t1))
        assert final is not None and final.state == "queued" and final.job_id == jobs[0].id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source_kind", "scale"),
    [("dimse", 1.02), ("dicomweb", 1.0)],
    ids=["c-find-c-move-scaled-prior", "qido-wado-identical-prior"],
)
def test_brain_volume_change_against_a_prior_fetched_from_the_pacs(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path, source_kind: str, scale: float
) -> None:
    """The prior T1 (a year earlier) is found and fetched from Orthanc, by C-FIND + C-MOVE (its
    pixels 2 % larger: ≈ 6 % more brain) or by QIDO-RS + WADO-RS (identical: ≈ 0 mL change)."""
    orthanc = orthanc_clean
    current_date = datetime.strptime(str(pydicom.dcmread(next(t1_series_dir.iterdir())).StudyDate), "%Y%m%d")
    prior_date = (current_date - timedelta(days=365)).strftime("%Y%m%d")
    prior = write_prior(t1_series_dir, tmp_path / "prior", prior_date, scale=scale)
    assert peers.storescu(prior, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
    ae = "RADLOOP_BRAINCHG"
    source: dict[str, object] = (
        {
            "name": "pacs",
            "kind": "dimse",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": orthanc.aet,
            "listener_ae_title": ae,
            "timeout_s": 60,
        }
        if source_kind == "dimse"
        else {"name": "pacs", "kind": "dicomweb", "url": orthanc.dicomweb_url, "listener_ae_title": ae}
    )
    config = {
        "dicom": {
            "listeners": [{"ae_title": ae, "pipelines": ["brain-volume-change"], "quiet_period_s": 60}]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"destinations": {"brain-volume-change": ["pacs"]}},
        "sources": [source],
    }
    with RadloopServer(_dir(tmp_path / "server"), config) as server:
        orthanc.add_modality("radloop", ae, "127.0.0.1", server.port)
        _send(server, ae, t1_series_dir)

        kinds = {SEG_STORAGE: "SEG", SR_STORAGE: "SR", SC_STORAGE: "SC"}

        def results() -> dict[str, str]:
            tags = {i: orthanc.instance_tags(i).get("SOPClassUID") for i in orthanc.instances()}
            found = {kinds[c]: i for i, c in tags.items() if c in kinds}
            return found if len(found) == len(kinds) else {}

        found = peers.wait_for(
            results, 300, interval=1.0, what=f"SEG, SR and SC in Orthanc (log {server.log_path})"
        )
        (job,) = _rows(server, Job)
        assert job.state == JobState.succeeded and job.pipeline == "brain-volume-change"
        inputs = {i.name: i for i in _rows(server, JobInput)}
        assert set(inputs) == {"t1", "prior_t1"} and inputs["prior_t1"].prior
        assert inputs["prior_t1"].study_instance_uid == _study_uid(prior)
        prior_series = [
            s
            for s in _rows(server, Series)
            if s.series_instance_uid == inputs["prior_t1"].series_instance_uid
        ]
        assert (
            prior_series[0].instance_count == 170 and "retrieved as a prior" in prior_series[0].routing_note
        )

    for kind in ("SEG", "SR", "SC"):
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(orthanc.instance_file(found[kind]))
        assert peers.dciodvfy(path) == [], peers.dciodvfy_report(path)
    sr = pydicom.dcmread(tmp_path / "SR.dcm")
    values = _measurements(sr)
    now, before = values["Brain (current)/Volume"], values["Brain (prior)/Volume"]
    assert 1000 < now < 1800, values  # an adult brain, in mL
    assert before / now == pytest.approx(volume_ratio(scale), rel=0.01), values
    assert values["Brain volume change/Volume change"] == pytest.approx(now - before, abs=1e-6)
    if scale == 1.0:
        assert abs(now - before) < 0.5, values  # the same brain a year earlier: no change
    assert {str(s.StudyInstanceUID) for s in sr.PertinentOtherEvidenceSequence} == {_study_uid(prior)}
    print(f"brain volume now {now:.1f} mL, prior {before:.1f} mL, ratio {before / now:.4f}")


def _measurements(sr: pydicom.Dataset) -> dict[str, float]:
    """Numeric measurements by "<tracking identifier>/<concept name>"."""
    values = {}
    for item in sr.ContentSequence:
        for group in item.get("ContentSequence", []):
            tracking = [t.TextValue for t in group.get("ContentSequence", []) if t.ValueType == "TEXT"]
            for m in group.get("ContentSequence", []):
                if m.ValueType == "NUM":
                    key = f"{tracking[0] if tracking else ''}/{m.ConceptNameCodeSequence[0].CodeMeaning}"
                    values[key] = float(m.MeasuredValueSequence[0].NumericValue)
    return values


WITH_PRIOR = """\
name: with-prior
version: "1"
trigger: study
inputs:
  ct: {modality: [CT], min_instances: 8}
  prior_ct:
    prior: {source: web, modality: CT, min_instances: 8, max_age_days: 800}
    required: false
operators:
  - id: ct-volume
    use: dicom.series_to_volume
    inputs: {series: input.ct}
  - id: prior-volume
    use: dicom.series_to_volume
    inputs: {series: input.prior_ct}
"""


def test_prior_over_dicomweb_is_found_retrieved_not_routed_and_optional(
    orthanc_clean: peers.OrthancServer, synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    orthanc = orthanc_clean
    prior = write_prior(synthetic_ct_dir, tmp_path / "prior", "20230101")
    assert peers.storescu(prior, "127.0.0.1", orthanc.dicom_port, orthanc.aet).returncode == 0
    lonely = write_prior(synthetic_ct_dir, tmp_path / "lonely", "20240101")
    for f in lonely.iterdir():  # another patient: Orthanc has no prior of theirs
        ds = pydicom.dcmread(f)
        ds.PatientID = "NO-PRIOR"
        ds.save_as(f)
    pipelines = _dir(tmp_path / "pipelines")
    (pipelines / "with-prior.yaml").write_text(WITH_PRIOR)
    ae = "STUDY_PRIOR"
    config = {
        "dicom": {"listeners": [{"ae_title": ae, "pipelines": ["with-prior"], "quiet_period_s": 60}]},
        "pipelines": {"dirs": [str(pipelines)], "include_reference": False},
        "sources": [
            {"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url, "listener_ae_title": ae}
        ],
    }
    with RadloopServer(_dir(tmp_path / "server"), config) as server:
        _send(server, ae, synthetic_ct_dir)
        (job,) = peers.wait_for(
            lambda: [j for j in _rows(server, Job) if j.state == JobState.succeeded], 60, what="the job"
        )
        inputs = {i.name: i for i in _rows(server, JobInput) if i.job_id == job.id}
        assert set(inputs) == {"ct", "prior_ct"} and inputs["prior_ct"].study_instance_uid == _study_uid(
            prior
        )
        steps = {s.operator_id: s.state for s in _rows(server, JobStep) if s.job_id == job.id}
        assert steps == {"ct-volume": "succeeded", "prior-volume": "succeeded"}
        (prior_series,) = [
            s
            for s in _rows(server, Series)
            if s.series_instance_uid == inputs["prior_ct"].series_instance_uid
        ]
        assert prior_series.instance_count == 16 and "retrieved as a prior" in prior_series.routing_note

        _send(server, ae, lonely)  # no prior → the prior branch is skipped, the job succeeds
        jobs = peers.wait_for(
            lambda: [j for j in _rows(server, Job) if j.state == JobState.succeeded and j.id != job.id], 60
        )
        assert len(jobs) == 1 and jobs[0].study_instance_uid == _study_uid(lonely)
        assert [i.name for i in _rows(server, JobInput) if i.job_id == jobs[0].id] == ["ct"]
        steps = {s.operator_id: s.state for s in _rows(server, JobStep) if s.job_id == jobs[0].id}
        assert steps == {"ct-volume": "succeeded"}
        assert len(_rows(server, Job)) == 2  # the prior study itself started nothing
