"""Every result format and every way out, end to end against real peers.

A real ``radloop serve`` runs the brain pipeline that writes SEG, RTSTRUCT, SR and secondary
captures (``brain-extraction-all-outputs``) on the real T1 series with the real deepbet models,
and delivers the results by STOW-RS to one Orthanc, by C-STORE to another, and the secondary
captures only to a folder. Then: Orthanc down for two minutes while results are produced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlmodel import Session, select

import peers
from helpers_data import series_ref_of
from helpers_geometry import dice, rasterise_rtstruct
from radloop.core.metrics import registry_for, render
from radloop.core.models import Delivery, DeliveryState, Job, JobState, Result
from radloop.pipelines.ports import Volume
from radloop.pipelines.volume import load_volume
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

AE = "RADLOOP_BRAINALL"
PIPELINE = "brain-extraction-all-outputs"
PIPELINE_TIMEOUT_S = 420.0


def _config(destinations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dicom": {"listeners": [{"ae_title": AE, "pipelines": [PIPELINE], "quiet_period_s": 60}]},
        "destinations": destinations,
        "pipelines": {"destinations": {PIPELINE: [d["name"] for d in destinations]}},
    }


def _dicom(orthanc: peers.OrthancServer, name: str = "pacs") -> dict[str, Any]:
    return {
        "kind": "dicom",
        "name": name,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "ae_title": orthanc.aet,
    }


def _stow(orthanc: peers.OrthancServer, name: str = "web") -> dict[str, Any]:
    return {"kind": "dicomweb", "name": name, "url": orthanc.dicomweb_url, "timeout_s": 10}


def _results(server: RadloopServer) -> list[Result]:
    with Session(server.engine) as s:
        return list(s.exec(select(Result)).all())


def _deliveries(server: RadloopServer) -> list[Delivery]:
    with Session(server.engine) as s:
        return list(s.exec(select(Delivery)).all())


def _all_sent(server: RadloopServer) -> bool:
    rows = _deliveries(server)
    return bool(rows) and all(d.state == DeliveryState.sent for d in rows)


def _job_done(server: RadloopServer) -> Job | None:
    with Session(server.engine) as s:
        job = s.exec(select(Job)).first()
    if job is not None and job.state == JobState.failed:
        raise AssertionError(f"job failed: {job.error}\n{server.log_text()[-4000:]}")
    return job if job is not None and job.state == JobState.succeeded else None


def _sop_uids(orthanc: peers.OrthancServer) -> list[str]:
    """SOPInstanceUID of every instance Orthanc holds (a list: duplicates would show)."""
    return [str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances()]


def _fetch(orthanc: peers.OrthancServer, sop_uid: str, path: Path) -> Dataset:
    found = json.loads(orthanc.request("POST", "/tools/lookup", body=sop_uid.encode()))
    (instance,) = [f["ID"] for f in found if f["Type"] == "Instance"]
    data = orthanc.instance_file(instance)
    path.write_bytes(data)
    return pydicom.dcmread(DicomBytesIO(data))


def _t1_volume(t1_series_dir: Path) -> Volume:
    paths = sorted(t1_series_dir.glob("*.dcm"))
    return load_volume(paths, series_ref_of(paths[0]))


def _source_positions(t1_series_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in t1_series_dir.glob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = np.array(ds.ImagePositionPatient, dtype=float)
    return out


def _run_pipeline(server: RadloopServer, t1_series_dir: Path) -> None:
    sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, AE)
    assert sent.returncode == 0, sent.stderr
    peers.wait_for(
        lambda: _job_done(server),
        PIPELINE_TIMEOUT_S,
        interval=1.0,
        what=f"pipeline job (log: {server.log_path})",
    )


def test_brain_pipeline_writes_all_four_outputs_to_stow_c_store_and_a_folder(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    screens = tmp_path / "screens"
    destinations = [
        _stow(orthanc_clean),
        {"kind": "folder", "name": "screens", "path": str(screens), "accepts": ["SC"]},
    ]
    with peers.OrthancServer(tmp_path / "pacs") as pacs:
        destinations.append(_dicom(pacs))
        (tmp_path / "radloop").mkdir()
        with RadloopServer(tmp_path / "radloop", _config(destinations)) as server:
            _run_pipeline(server, t1_series_dir)
            peers.wait_for(lambda: _all_sent(server), 300, interval=1.0, what="outbox drained")
            results = _results(server)
        by_kind: dict[str, list[str]] = {}
        for r in results:
            by_kind.setdefault(r.kind, []).append(r.sop_instance_uid)
        assert {k: len(v) for k, v in by_kind.items() if k != "SC"} == {"SEG": 1, "RTSTRUCT": 1, "SR": 1}
        assert len(by_kind["SC"]) >= 50
        expected = sorted(r.sop_instance_uid for r in results)
        assert sorted(_sop_uids(orthanc_clean)) == expected  # STOW-RS: each result once
        assert sorted(_sop_uids(pacs)) == expected  # C-STORE: the same results, once
        assert sorted(p.stem for p in screens.glob("*.dcm")) == sorted(by_kind["SC"])  # only the SC
        for kind in ("SEG", "RTSTRUCT", "SR"):
            copy = _fetch(pacs, by_kind[kind][0], tmp_path / f"pacs-{kind}.dcm")
            assert copy.SOPInstanceUID == by_kind[kind][0]
            assert peers.dciodvfy(tmp_path / f"pacs-{kind}.dcm") == []
        _check_outputs(orthanc_clean, by_kind, t1_series_dir, tmp_path)


def _check_outputs(
    orthanc: peers.OrthancServer, by_kind: dict[str, list[str]], t1_series_dir: Path, tmp_path: Path
) -> None:
    """Conformance, re-reading and geometry of what Orthanc holds."""
    files = {kind: tmp_path / f"{kind}.dcm" for kind in ("SEG", "RTSTRUCT", "SR")}
    sc_uids = [by_kind["SC"][0], by_kind["SC"][len(by_kind["SC"]) // 2]]
    for kind, path in files.items():
        _fetch(orthanc, by_kind[kind][0], path)
    for n, uid in enumerate(sc_uids):
        files[f"SC{n}"] = tmp_path / f"SC{n}.dcm"
        _fetch(orthanc, uid, files[f"SC{n}"])
    for path in files.values():
        errors = peers.dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        print(f"\ndciodvfy {path.name}: no errors")

    volume = _t1_volume(t1_series_dir)
    positions = _source_positions(t1_series_dir)
    seg = hd.seg.segread(files["SEG"])
    for item in seg.PerFrameFunctionalGroupsSequence:  # SEG frames sit on the source slices
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        np.testing.assert_allclose(
            np.array(item.PlanePositionSequence[0].ImagePositionPatient, float),
            positions[str(source.ReferencedSOPInstanceUID)],
            atol=0.01,
        )
    mask = (
        seg.get_pixels_by_source_instance(
            [f.sop_instance_uid for f in volume.source_frames], combine_segments=True
        )
        > 0
    )

    rt = pydicom.dcmread(files["RTSTRUCT"])
    assert rt.FrameOfReferenceUID == seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    score = dice(rasterise_rtstruct(rt, volume, 1), mask)
    print(f"RTSTRUCT contours vs SEG mask: Dice {score:.4f}")
    assert score >= 0.95

    sr = hd.sr.srread(files["SR"])
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment is not None
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    (measurement,) = group.get_measurements()
    seg_voxels = int(np.count_nonzero(seg.get_volume(combine_segments=True).array))
    seg_voxel_ml = float(np.prod(seg.get_volume().spacing)) / 1000.0
    print(
        f"SR brain volume {measurement.value:.2f} mL; SEG {seg_voxels} voxels x {seg_voxel_ml * 1000:.4f} mm3"
    )
    assert measurement.value == pytest.approx(seg_voxels * seg_voxel_ml, rel=1e-5)

    for n in range(len(sc_uids)):
        sc = pydicom.dcmread(files[f"SC{n}"])
        assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.shape == (*volume.array.shape[1:], 3)
        source_uid = str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose(np.array(sc.ImagePositionPatient, float), positions[source_uid], atol=0.01)


def test_orthanc_down_two_minutes_every_result_arrives_exactly_once(
    t1_series_dir: Path, tmp_path: Path
) -> None:
    """The PACS (a separate Orthanc) is stopped for >= 120 s while the pipeline runs; the outbox
    shows pending rows with their last error, and after the restart every result is there once."""
    outage_s = 120.0
    pacs = peers.OrthancServer(tmp_path / "pacs").start()
    config = _config([_dicom(pacs), _stow(pacs)])
    config["outbox"] = {"retry_base_s": 1.0, "retry_cap_s": 4.0, "poll_interval_s": 0.5}
    try:
        (tmp_path / "radloop").mkdir()
        with RadloopServer(tmp_path / "radloop", config) as server:
            pacs.stop()
            down_since = time.monotonic()
            _run_pipeline(server, t1_series_dir)
            pending = peers.wait_for(
                lambda: _pending_with_errors(server),
                60,
                interval=1.0,
                what="every delivery pending with an error",
            )
            print(f"\n{len(pending)} deliveries pending while Orthanc is down: {pending[0]['last_error']!r}")
            assert {d["destination"] for d in pending} == {"pacs", "web"}
            assert _delivery_failures(server) >= len(pending)
            peers.wait_for(
                lambda: time.monotonic() - down_since >= outage_s,
                outage_s + 10,
                interval=1.0,
                what="two minutes of outage",
            )
            assert _pending_with_errors(server)  # still pending after two minutes, nothing given up
            _dismiss_then_retry(server, pending[0]["id"])
            pacs.start()
            print(f"Orthanc back after {time.monotonic() - down_since:.0f} s")
            peers.wait_for(lambda: _all_sent(server), 180, interval=1.0, what="outbox drained after restart")
            results = _results(server)
            attempts = [d.attempts for d in _deliveries(server)]
        held = _sop_uids(pacs)
        assert sorted(held) == sorted(r.sop_instance_uid for r in results)  # every result, exactly once
        assert len(held) == len(set(held)) == len(results)
        assert min(attempts) >= 2
        print(
            f"{len(results)} results x 2 destinations delivered; attempts per delivery "
            f"{min(attempts)}..{max(attempts)}"
        )
    finally:
        pacs.stop()


def _pending_with_errors(server: RadloopServer) -> list[dict[str, Any]]:
    """``radloop deliveries list --json`` when every row is pending with a last error, else []."""
    listing = server.cli("deliveries", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)  # the newest 100 rows
    results = _results(server)
    if not rows or len(rows) < min(100, 2 * len(results)):
        return []
    ok = all(r["state"] == "pending" and r["last_error"] and r["attempts"] >= 1 for r in rows)
    return rows if ok else []


def _delivery_failures(server: RadloopServer) -> float:
    """The ``radloop_delivery_failures`` counter, summed over destinations, as /metrics shows it."""
    text = render(registry_for(server.engine)).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("radloop_delivery_failures_total{")
    )


def _dismiss_then_retry(server: RadloopServer, delivery_id: int) -> None:
    """``radloop deliveries dismiss`` stops a row; ``retry`` puts it back in the queue, due now."""
    dismissed = server.cli("deliveries", "dismiss", str(delivery_id), "--json")
    assert dismissed.returncode == 0, dismissed.stderr
    assert json.loads(dismissed.stdout)["state"] == "dismissed"
    retried = server.cli("deliveries", "retry", str(delivery_id), "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["state"] == "pending"
