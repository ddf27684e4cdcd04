"""The fault-injection matrix: real processes, real outages, and what must hold after each.

Every fault is done to a real ``radloop serve`` process (killed with ``kill -9``), a real peer
(Orthanc paused with SIGSTOP, a private PostgreSQL cluster restarted, a tmpfs filled up) or a
real CLI process. After recovery settles, each test checks the same promises
(`fault_injection.assert_recovered`): every acknowledged instance is on disk and indexed, every
job finished exactly once (none left queued or running), every result is in the PACS exactly
once, and no temporary or half-written file is left under ``data_dir``.

Two rows of the matrix are proven elsewhere and are not repeated here:
- kill -9 during receive: `test_spine.py::test_kill9_during_transfer_loses_nothing_and_duplicates_nothing`
  (plus, here, what a crash mid-write leaves behind and whether start-up cleans it);
- PACS down: `test_outputs.py::test_orthanc_down_two_minutes_every_result_arrives_exactly_once`.
The table is in `docs/fault-matrix.md`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from sqlmodel import Session, col, select

import fault_injection as fi
import helpers_reviews as hr
import peers
import review_env
from radloop.connector.store import InstanceStore
from radloop.core import db
from radloop.core.models import Instance, JobState, JobStep, Review, ReviewDecision
from radloop.feedback.assessments import ASSESSMENT_KIND
from radloop.inference.packaged import packaged_models
from radloop.inference.store import ModelStore
from radloop.inference.triton_local import DEFAULT_VENV, LocalTriton, ensure_venv
from radloop.inference.triton_repo import build_repository
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

BRAIN_AE = "RADLOOP_BRAIN"
PLAIN_AE = "RADLOOP"


def _config(orthanc: peers.OrthancServer, **extra: Any) -> dict[str, Any]:
    """Brain pipeline on BRAIN_AE delivering to ``orthanc``; a plain AE that routes nowhere."""
    cfg: dict[str, Any] = {
        "dicom": {
            "listeners": [
                {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60},
                {"ae_title": PLAIN_AE, "pipelines": [], "quiet_period_s": 60},
            ]
        },
        "destinations": [orthanc.destination(timeout_s=10)],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
        "workers": {"max_attempts": 3, "retry_base_s": 1.0, "retry_cap_s": 4.0},
    }
    return _merge(cfg, extra)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _wait_settled(server: RadloopServer, timeout: float) -> None:
    peers.wait_for(
        lambda: fi.settled(server), timeout, interval=0.5, what=f"recovery (log {server.log_path})"
    )


def _sop_uids(folder: Path) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(folder.iterdir())]


def _step_started(server: RadloopServer, operator_id: str) -> bool:
    with Session(server.engine) as s:
        return s.exec(select(JobStep).where(JobStep.operator_id == operator_id)).first() is not None


def _storescu_v(folder: Path, port: int, ae: str) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu -v on every file of ``folder`` (one association, going on after a refusal:
    ``-nh``); DCMTK logs status 0xA7xx as ``Refused: OutOfResources``."""
    cmd = [peers.require_binary("storescu"), "-v", "-aet", "STORESCU", "-aec", ae, "-to", "10", "-ta", "10",
           "-td", "30", "-nh", "+sd", "127.0.0.1", str(port), str(folder)]  # fmt: skip
    return subprocess.run(cmd, env=peers.peer_env(), capture_output=True, text=True, timeout=300, check=False)


def _responses(storescu_log: str) -> list[tuple[Path, str]]:
    """(file, status text) of each C-STORE response storescu -v logged, in order."""
    out, current = [], None
    for line in storescu_log.splitlines():
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response" in line and current is not None:
            out.append((current, line.split("Received Store Response", 1)[1].strip()))
            current = None
    return out


def _acked_uids(storescu_log: str) -> list[str]:
    return [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for f, status in _responses(storescu_log)
        if status.startswith("(Success")
    ]


# --------------------------------------------------------------------------- 1. kill -9 during receive


def test_restart_cleans_what_a_crash_left_mid_write(
    orthanc_clean: peers.OrthancServer, synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    """The receive row's second half: what ``kill -9`` leaves in the store mid-write (a temp file,
    a renamed file that was never indexed nor acknowledged) is reconciled at the next start-up.

    The kill itself is `test_spine.py::test_kill9_during_transfer_…`; landing it between write and
    rename is luck, so the leftovers are laid down exactly as `_write_durably` names them."""
    server = RadloopServer(tmp_path, _config(orthanc_clean)).start()
    sent = peers.storescu(synthetic_ct_dir, "127.0.0.1", server.port, PLAIN_AE)
    assert sent.returncode == 0, sent.stderr
    server.kill9()
    with Session(server.engine) as s:
        first = s.exec(select(Instance)).first()
    assert first is not None
    folder = (server.settings.data_dir / first.path).parent
    (folder / f".{uuid.uuid4()}.dcm.{uuid.uuid4().hex}.tmp").write_bytes(b"")  # killed before the write
    (folder / f".{uuid.uuid4()}.dcm.{uuid.uuid4().hex}.tmp").write_bytes(b"DICM" * 1000)  # mid-write
    ds = pydicom.dcmread(server.settings.data_dir / first.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    unindexed = folder / f"{ds.SOPInstanceUID}.dcm"  # renamed, then killed before the index commit
    ds.save_as(unindexed, enforce_file_format=True)
    server.start()
    try:
        peers.wait_for(lambda: peers.echoscu("127.0.0.1", server.port, PLAIN_AE).returncode == 0, 30)
        assert fi.leftover_temp_files(server.settings.data_dir) == []
        with Session(server.engine) as s:
            indexed = {i.sop_instance_uid for i in s.exec(select(Instance)).all()}
        # Either indexed (reconciled from the file) or removed: never a file no query reaches.
        assert str(ds.SOPInstanceUID) in indexed or not unindexed.exists()
    finally:
        server.stop()


# --------------------------------------------------------------------------- 2. kill -9 during a job


def test_kill9_during_a_job_the_job_finishes_once(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    server = RadloopServer(tmp_path, _config(orthanc_clean)).start()
    try:
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        peers.wait_for(lambda: _step_started(server, "brain"), 120, interval=0.05, what="deepbet running")
        server.kill9()
        (job,) = fi.jobs(server)
        assert job.state == JobState.running  # what the dead process left
        assert fi.sop_uids_in(orthanc_clean) == []
        server.start()
        _wait_settled(server, 240)
        fi.assert_recovered(server, orthanc_clean, acknowledged=_sop_uids(t1_series_dir), expected_jobs=1)
        (job,) = fi.jobs(server)
        assert job.attempts == 2
        assert [orthanc_clean.instance_tags(i)["Modality"] for i in orthanc_clean.instances()] == ["SEG"]
    finally:
        server.stop()


# --------------------------------------------------------------------------- 3. kill -9 during a delivery


def test_kill9_during_a_delivery_the_pacs_gets_one_copy(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    """Orthanc hangs (SIGSTOP) while the outbox is connected to it; radloop is killed mid-send;
    Orthanc resumes; radloop restarts and sends again."""
    server = RadloopServer(tmp_path, _config(orthanc_clean)).start()
    try:
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        with fi.paused(fi.orthanc_pid(orthanc_clean)):
            peers.wait_for(lambda: fi.deliveries(server), 240, interval=0.2, what="delivery queued")
            peers.wait_for(
                lambda: fi.established_to(orthanc_clean.dicom_port) > 0,
                30,
                interval=0.05,
                what="the outbox connected to the paused Orthanc",
            )
            server.kill9()
        assert {d.state for d in fi.deliveries(server)} == {"pending"}
        server.start()
        _wait_settled(server, 120)
        fi.assert_recovered(server, orthanc_clean, acknowledged=_sop_uids(t1_series_dir), expected_jobs=1)
    finally:
        server.stop()


# --------------------------------------------------------------------------- 4. kill -9 during an export


def _reviewed_site(server: RadloopServer, t1_series_dir: Path, n_patients: int) -> None:
    """``n_patients`` slabs of the T1 as patients, each with an AI SEG and an accepted review."""
    settings = server.settings
    db.upgrade(settings)
    store = InstanceStore(settings.data_dir, server.engine)
    files = sorted(t1_series_dir.glob("*.dcm"))
    for n in range(n_patients):
        copied, _ = hr.copy_as_patient(
            files[60 : 60 + 32],
            server.workdir / "copies" / str(n),
            f"FAULT-{n:04d}",
            f"Fault^P{n}",
            "20240101",
        )
        series = hr.ingest(store, copied)
        shape = series.volume.array.shape
        mask = np.zeros(shape, dtype=bool)
        mask[:, shape[1] // 4 : 3 * shape[1] // 4, shape[2] // 4 : 3 * shape[2] // 4] = True
        job = hr.add_job(server.engine, series, f"job-{n}")
        result = hr.add_ai_result(server.engine, settings.data_dir, job, series, mask)
        decided = datetime(2026, 1, 1, 9, n, tzinfo=UTC)
        hr.review(settings, server.engine, result, series, ReviewDecision.accepted, "r@example.org", decided)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill9_during_a_training_export_the_next_run_completes_it(
    orthanc: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    """``radloop export dataset`` killed after its first case; the rerun gives the same dataset,
    byte for byte, as an export that was never interrupted."""
    server = RadloopServer(tmp_path, _config(orthanc))
    _reviewed_site(server, t1_series_dir, n_patients=6)
    args = ("export", "dataset", "--pipeline", hr.PIPELINE, "--format", "monai", "--seed", "5", "--json")
    out = tmp_path / "dataset"
    cmd = [sys.executable, "-m", "radloop.cli", *args, "--out", str(out), "-c", str(server.config_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        peers.wait_for(lambda: any(out.rglob("*.nii.gz")) or proc.poll() is not None, 120, interval=0.01,
                       what="first exported case")  # fmt: skip
        proc.kill()
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -9, "the export finished before the kill; make the site larger"
    again = server.cli(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    clean = server.cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    assert _tree(out) == _tree(tmp_path / "clean")
    assert fi.leftover_temp_files(out) == []


# --------------------------------------------------------------------------- 5. disk full


def _indexed_files_only(server: RadloopServer) -> None:
    """Every ``.dcm`` in the store is complete and indexed: no reader sees a half-written instance."""
    data_dir = server.settings.data_dir
    with Session(server.engine) as s:
        indexed = {data_dir / i.path for i in s.exec(select(Instance)).all()}
    files = set((data_dir / "instances").rglob("*.dcm"))
    assert files == indexed
    for path in files:
        assert pydicom.dcmread(path).pixel_array.size > 0  # a truncated file raises here


def test_disk_full_during_receive_out_of_resources_then_normal_service(
    orthanc: peers.OrthancServer, tmp_path: Path
) -> None:
    series = tmp_path / "ct"
    peers.make_synthetic_ct_series(series, n=24, rows=512, cols=512, seed=3)  # 24 x 512 KB
    with fi.tmpfs(tmp_path / "disk", size_mb=64) as disk:
        data_dir = disk / "data"
        server = RadloopServer(tmp_path, _config(orthanc, data_dir=str(data_dir))).start()
        try:
            filler = fi.fill(disk, leave_bytes=3 * 512 * 1024)
            full = _storescu_v(series, server.port, PLAIN_AE)
            statuses = [status for _, status in _responses(full.stdout + full.stderr)]
            acked = _acked_uids(full.stdout + full.stderr)
            refused = [s for s in statuses if not s.startswith("(Success")]
            assert len(statuses) == 24 and refused, statuses
            assert all(s == "(Refused: OutOfResources)" for s in refused), statuses
            fi.assert_acknowledged_stored(server, acked)
            _indexed_files_only(server)
            filler.unlink()
            again = _storescu_v(series, server.port, PLAIN_AE)
            assert again.returncode == 0, again.stdout + again.stderr
            assert len(_acked_uids(again.stdout + again.stderr)) == 24
            fi.assert_acknowledged_stored(server, _sop_uids(series))
            _indexed_files_only(server)
        finally:
            server.stop()


def test_disk_full_during_receive_leaves_no_temp_file(orthanc: peers.OrthancServer, tmp_path: Path) -> None:
    series = tmp_path / "ct"
    peers.make_synthetic_ct_series(series, n=6, rows=512, cols=512, seed=4)
    with fi.tmpfs(tmp_path / "disk", size_mb=32) as disk:
        data_dir = disk / "data"
        server = RadloopServer(tmp_path, _config(orthanc, data_dir=str(data_dir))).start()
        try:
            fi.fill(disk, leave_bytes=256 * 1024)
            full = _storescu_v(series, server.port, PLAIN_AE)
            assert "(Refused: OutOfResources)" in full.stdout + full.stderr
            assert fi.leftover_temp_files(data_dir) == []
        finally:
            server.stop()


def test_disk_full_while_writing_results_the_job_retries_once_space_is_back(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    """The data disk fills up while deepbet runs (the index lives elsewhere, so the job can record
    why): the attempt fails naming the full disk, the retry after space is freed succeeds."""
    with fi.tmpfs(tmp_path / "disk", size_mb=160) as disk:
        data_dir = disk / "data"
        extra = {"data_dir": str(data_dir), "database": {"url": f"sqlite:///{tmp_path / 'radloop.db'}"},
                 "workers": {"max_attempts": 10, "retry_base_s": 1.0, "retry_cap_s": 2.0}}  # fmt: skip
        server = RadloopServer(tmp_path, _config(orthanc_clean, **extra)).start()
        try:
            sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
            assert sent.returncode == 0, sent.stderr
            peers.wait_for(lambda: _step_started(server, "brain"), 120, interval=0.05, what="deepbet running")
            filler = fi.fill(disk, leave_bytes=0)

            def failed_attempt() -> str:
                with Session(server.engine) as s:
                    step = s.exec(select(JobStep).where(col(JobStep.state) == "failed")).first()
                return step.error if step is not None else ""

            error = peers.wait_for(
                failed_attempt, 120, interval=0.2, what="an attempt failing on the full disk"
            )
            assert "No space left on device" in error or "disk" in error.lower(), error
            assert fi.leftover_temp_files(data_dir) == []
            filler.unlink()
            _wait_settled(server, 180)
            fi.assert_recovered(server, orthanc_clean, acknowledged=_sop_uids(t1_series_dir), expected_jobs=1)
        finally:
            server.stop()


# --------------------------------------------------------------------------- 6. PostgreSQL restarted


def test_postgresql_restarted_mid_receive_and_mid_job_nothing_lost_or_doubled(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    pg = fi.PrivatePostgres().start()
    try:
        cfg = _config(orthanc_clean, database={"url": pg.url})
        cfg["dicom"]["listeners"][0].update(quiet_period_s=6, complete_on_release=False)
        (tmp_path / "radloop").mkdir()
        server = RadloopServer(tmp_path / "radloop", cfg).start()
        try:
            cmd = [peers.require_binary("storescu"), "-v", "-aet", "STORESCU", "-aec", BRAIN_AE,
                   "-to", "10", "-ta", "10", "-td", "30", "-nh", "+sd", "127.0.0.1", str(server.port),
                   str(t1_series_dir)]  # fmt: skip
            sender = subprocess.Popen(
                cmd, env=peers.peer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            with Session(server.engine) as s:
                peers.wait_for(lambda: len(s.exec(select(Instance)).all()) >= 40, 60, interval=0.05,
                               what="40 instances indexed")  # fmt: skip
            pg.restart()
            server.engine.dispose()  # the test's own pooled connections died with the server
            first, _ = sender.communicate(timeout=300)
            acked = _acked_uids(first)
            print(f"\nPostgreSQL restarted mid-receive: {len(acked)}/170 acknowledged in the first send")
            again = _storescu_v(t1_series_dir, server.port, BRAIN_AE)  # the modality resends what failed
            acked += _acked_uids(again.stdout + again.stderr)
            assert again.returncode == 0, again.stdout[-3000:]
            peers.wait_for(lambda: _step_started(server, "brain"), 120, interval=0.05, what="deepbet running")
            pg.restart()
            server.engine.dispose()
            _wait_settled(server, 240)
            fi.assert_recovered(server, orthanc_clean, acknowledged=acked, expected_jobs=1)
            with Session(server.engine) as s:
                assert len(s.exec(select(Instance)).all()) == 170
            (job,) = fi.jobs(server)
            print(f"PostgreSQL restarted mid-job: job succeeded after {job.attempts} attempt(s)")
        finally:
            server.stop()
    finally:
        pg.stop()


# --------------------------------------------------------------------------- 8. Triton killed mid-inference


def _inferences(triton: LocalTriton, model: str) -> int:
    """How many inferences of ``model`` the server has completed (its statistics endpoint)."""
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/stats", timeout=5) as response:
        stats = json.loads(response.read())
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def test_triton_killed_mid_inference_the_job_retries_and_succeeds_once(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    """The README's promise: an UNAVAILABLE Triton fails the attempt naming URL and model, and the
    job machinery retries the job with backoff; with Triton back, the job succeeds, once."""
    store = ModelStore(tmp_path / "models")
    for model in packaged_models().values():
        store.add_packaged(model)
    build_repository(store, tmp_path / "repo", "python")
    venv = Path(os.environ.get("RADLOOP_TRITON_VENV", DEFAULT_VENV))
    ensure_venv(venv)
    triton = LocalTriton(tmp_path / "repo", venv, tmp_path / "triton").start(ready_timeout_s=300)
    try:
        url = triton.grpc_url
        inference = {"backend": "triton", "url": url, "retries": 1, "retry_backoff_s": 0.2,
                     "connect_timeout_s": 2, "timeout_s": 120}  # fmt: skip
        extra = {"inference": {"default": inference},
                 "workers": {"max_attempts": 12, "retry_base_s": 1.0, "retry_cap_s": 8.0}}  # fmt: skip
        (tmp_path / "radloop").mkdir()
        server = RadloopServer(tmp_path / "radloop", _config(orthanc_clean, **extra)).start()
        try:
            sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
            assert sent.returncode == 0, sent.stderr
            peers.wait_for(lambda: _step_started(server, "brain"), 180, interval=0.05, what="deepbet running")
            peers.wait_for(
                lambda: _inferences(triton, "deepbet_bbox") > 0,
                120,
                interval=0.05,
                what="deepbet's first network done on Triton (its second, 256³, is now running)",
            )
            assert triton.proc is not None
            os.killpg(triton.proc.pid, signal.SIGKILL)
            triton.proc.wait(timeout=10)

            def failed_brain_step() -> str:
                with Session(server.engine) as s:
                    step = s.exec(
                        select(JobStep).where(JobStep.operator_id == "brain", col(JobStep.state) == "failed")
                    ).first()
                return step.error if step is not None else ""

            error = peers.wait_for(failed_brain_step, 120, interval=0.2, what="the attempt failing")
            assert url in error and "deepbet" in error, error
            (job,) = fi.jobs(server)
            assert job.state == JobState.queued  # retried with backoff, not failed for good
            triton = LocalTriton(
                tmp_path / "repo", venv, tmp_path / "triton", http_port=triton.http_port,
                grpc_port=triton.grpc_port, metrics_port=triton.metrics_port,
            ).start(ready_timeout_s=300)  # fmt: skip
            _wait_settled(server, 300)
            fi.assert_recovered(server, orthanc_clean, acknowledged=_sop_uids(t1_series_dir), expected_jobs=1)
            (job,) = fi.jobs(server)
            assert job.attempts >= 2
            print(f"\nTriton killed mid-inference: {error!r}; succeeded at attempt {job.attempts}")
        finally:
            server.stop()
    finally:
        triton.stop()


# --------------------------------------------------------------------------- 4b. kill -9 during a review save


def test_kill9_during_a_review_save_the_resave_gives_one_edited_seg(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    """A reviewer's edit is being written as a SEG when radloop is killed; after the restart the
    reviewer saves again: one edited SEG, one decision, one copy in the PACS, no staging left."""
    launch_key = "fault-matrix-launch-key-0123456789abcdef"
    env = review_env.make_review_env(tmp_path, t1_series_dir, n_results=1)
    (result_id,) = env.results
    config = _config(
        orthanc_clean, secret_key="fault-matrix-secret-key-0123456789", review={"launch_key": launch_key}
    )
    server = RadloopServer(tmp_path, config).start()
    try:
        launch = server.cli("review-url", env.study_uid, "--reviewer", "r@example.org")
        assert launch.returncode == 0, launch.stderr
        http = requests.Session()
        opened = http.get(launch.stdout.strip().splitlines()[-1], allow_redirects=False, timeout=30)
        assert opened.status_code == 303, opened.text
        api = f"{server.api_url}/review/api/results/{result_id}"
        assert http.get(api, timeout=120).status_code == 200
        mask = http.get(f"{api}/mask.nii.gz", timeout=120)
        assert mask.status_code == 200
        image = nib.Nifti1Image.from_bytes(gzip.decompress(mask.content))
        labels = np.asarray(image.dataobj).astype(np.uint8)
        labels[: labels.shape[0] // 2] = 0  # the reviewer erases half of the mask
        body = nib.Nifti1Image(labels, image.affine, image.header).to_bytes()
        headers = {"X-Radloop-Review": "1", "Content-Type": "application/octet-stream"}

        def save() -> None:
            with contextlib.suppress(requests.RequestException):
                http.post(f"{api}/edit", data=body, headers=headers, timeout=120)

        saving = threading.Thread(target=save)
        saving.start()
        staging = server.settings.data_dir / "tmp"
        peers.wait_for(
            lambda: any(staging.glob("edited-*")), 60, interval=0.005, what="the edit being written"
        )
        server.kill9()
        saving.join(timeout=30)
        server.start()
        http = requests.Session()
        opened = http.get(launch.stdout.strip().splitlines()[-1], allow_redirects=False, timeout=30)
        saved = http.post(f"{api}/edit", data=body, headers=headers, timeout=120)
        assert saved.status_code == 200, saved.text
        peers.wait_for(
            lambda: not [d for d in fi.deliveries(server) if d.state == "pending"], 60, what="sent"
        )
        with Session(server.engine) as s:
            reviews = s.exec(select(Review)).all()
        assert [r.decision for r in reviews] == [ReviewDecision.edited]
        derived = [r for r in fi.results(server) if r.id != result_id]
        edited = [r for r in derived if r.kind == "SEG"]
        assessments = [r for r in derived if r.kind == ASSESSMENT_KIND]  # the decision as an SR (AIRA)
        assert len(edited) == 1 and len(assessments) == 1 and len(derived) == 2
        expected = [edited[0].sop_instance_uid, assessments[0].sop_instance_uid]
        assert sorted(fi.sop_uids_in(orthanc_clean)) == sorted(expected)  # each exactly once
        assert not any(staging.glob("edited-*")), "a killed save's staging folder is left"
        assert fi.leftover_temp_files(server.settings.data_dir) == []
    finally:
        server.stop()
