"""The spine, end to end on the embedded defaults, against real peers (Orthanc, DCMTK, dciodvfy).

A real ``radloop serve`` process receives over DICOM, runs the brain pipeline with the real
deepbet models, and delivers a DICOM SEG to Orthanc.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlmodel import Session, select

import peers
from radloop.core.models import Delivery, DeliveryState, Instance, Job, JobState, JobStep, Series
from radloop.core.refs import SeriesRef
from radloop.pipelines.volume import load_volume
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

BRAIN_AE = "RADLOOP_BRAIN"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
START_TIMEOUT_S = 240.0  # start-up loads deepbet in the worker: minutes on a loaded 2-core machine


def _config(orthanc: peers.OrthancServer, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dicom": {
            "listeners": [
                {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60},
                {"ae_title": "RADLOOP", "quiet_period_s": 60},
            ]
        },
        "destinations": [orthanc.destination()],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
    }
    return {**cfg, **extra}


def _seg_instances(orthanc: peers.OrthancServer) -> list[str]:
    return [i for i in orthanc.instances() if orthanc.instance_tags(i).get("Modality") == "SEG"]


def _jobs(server: RadloopServer) -> list[Job]:
    with Session(server.engine) as s:
        return list(s.exec(select(Job)).all())


def _seg_brain_volume_ml(seg: hd.seg.Segmentation) -> float:
    mask = seg.get_volume(combine_segments=True)  # highdicom Volume on the SEG's own grid
    voxels = int(np.count_nonzero(mask.array))
    return voxels * float(np.prod(mask.spacing)) / 1000.0


@pytest.mark.slow
def test_t1_series_to_brain_seg_in_orthanc(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    with RadloopServer(tmp_path, _config(orthanc_clean)) as server:
        t0 = time.monotonic()
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        segs = peers.wait_for(
            lambda: _seg_instances(orthanc_clean),
            240,
            interval=0.5,
            what=f"SEG in Orthanc (radloop log: {server.log_path})",
        )
        end_to_end = time.monotonic() - t0
        print(f"\nend-to-end (first byte sent → SEG stored in Orthanc): {end_to_end:.1f} s")
        (job,) = _jobs(server)
        assert job.state == JobState.succeeded
        with Session(server.engine) as s:
            steps = {st.operator: st for st in s.exec(select(JobStep).where(JobStep.job_id == job.id))}

    # stage timings are data on the step rows, in the order the operator ran them
    deepbet = steps["deepbet.brain_extraction"]
    assert list(deepbet.stages) == ["load", "pre", "infer", "post"]
    assert all(seconds >= 0.0 for seconds in deepbet.stages.values())
    assert deepbet.duration_s is not None and sum(deepbet.stages.values()) <= deepbet.duration_s + 0.01
    assert steps["dicom.series_to_volume"].stages == {}

    assert len(segs) == 1
    path = tmp_path / "seg.dcm"
    path.write_bytes(orthanc_clean.instance_file(segs[0]))
    assert peers.dciodvfy(path) == [], peers.dciodvfy_report(path)
    seg = hd.seg.segread(path)
    source = pydicom.dcmread(next(iter(sorted(t1_series_dir.iterdir()))), stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert referenced == {source.SeriesInstanceUID}
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "deepbet"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    volume_ml = _seg_brain_volume_ml(seg)
    print(f"brain volume from the SEG: {volume_ml:.0f} mL")
    assert 1000 <= volume_ml <= 1800


def test_j2k_ct_stored_as_sent_and_decodes(
    orthanc: peers.OrthancServer, ct_j2k_series_dir: Path, tmp_path: Path
) -> None:
    with RadloopServer(tmp_path, _config(orthanc)) as server:
        sent = peers.storescu(ct_j2k_series_dir, "127.0.0.1", server.port, "RADLOOP")
        assert sent.returncode == 0, sent.stderr
        with Session(server.engine) as s:
            instances = s.exec(select(Instance)).all()
        assert len(instances) == 20
        assert {i.transfer_syntax_uid for i in instances} == {J2K_LOSSLESS}
        data_dir = server.settings.data_dir
        paths = [data_dir / i.path for i in instances]
        for p in paths:
            assert str(pydicom.filereader.read_file_meta_info(p).TransferSyntaxUID) == J2K_LOSSLESS
        first = pydicom.dcmread(paths[0])
        ref = SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    volume = load_volume(paths, ref)
    assert volume.array.shape == (20, 512, 512)
    spacing = volume.spacing
    assert spacing[0] == pytest.approx(2.0, abs=1e-3)
    assert spacing[1:] == pytest.approx(tuple(float(x) for x in first.PixelSpacing), abs=1e-6)
    # Pixel data identical to what was sent (stored as sent, decoded here).
    sent_by_uid = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in ct_j2k_series_dir.iterdir()
    }
    for p in paths[:3]:
        mine = pydicom.dcmread(p)
        theirs = pydicom.dcmread(sent_by_uid[str(mine.SOPInstanceUID)])
        assert mine.PixelData == theirs.PixelData


def test_bad_input_is_refused_and_explained(
    orthanc: peers.OrthancServer, ct_bad_uid_dir: Path, ct_j2k_series_dir: Path, tmp_path: Path
) -> None:
    with RadloopServer(tmp_path, _config(orthanc)) as server:
        # 1. Data sets with empty UIDs: refused with a failure status and a logged reason.
        bad = sorted(ct_bad_uid_dir.iterdir())[0]
        status = peers.send_raw_dataset(bad, "127.0.0.1", server.port, "RADLOOP")
        assert status >= 0xA000, hex(status)
        peers.wait_for(lambda: "not a valid UID" in server.log_text(), 10, what="refusal log line")
        assert (
            "SOPClassUID is empty" in server.log_text()
            or "SOPInstanceUID is empty" in server.log_text()
            or "StudyInstanceUID is empty" in server.log_text()
        )
        # 2. Random bytes and a half-sent association on the DICOM port.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(np.random.default_rng(0).bytes(4096))
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                bytes.fromhex("01000000") + (1000).to_bytes(2, "big")
            )  # A-ASSOCIATE-RQ header, then silence
        # 3. A CT sent to the brain AE: a visible, explained non-match.
        sent = peers.storescu(ct_j2k_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        assert peers.echoscu("127.0.0.1", server.port, "RADLOOP").returncode == 0
        with Session(server.engine) as s:
            series = peers.wait_for(
                lambda: s.exec(select(Series).where(Series.routing_status == "unmatched")).first(),
                15,
                what="CT series marked unmatched",
            )
            assert series.modality == "CT"
            assert "Modality CT not in ['MR']" in series.routing_note
            assert s.exec(select(Job)).all() == []
            assert len(s.exec(select(Instance)).all()) == 20  # nothing else disturbed
        listing = server.cli("studies", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = json.loads(listing.stdout)
        assert rows[0]["series"][0]["routing_status"] == "unmatched"
        assert "Modality CT" in rows[0]["series"][0]["routing_note"]


def test_unknown_caller_and_called_ae_rejected(orthanc: peers.OrthancServer, tmp_path: Path) -> None:
    cfg = _config(orthanc)
    cfg["dicom"]["listeners"][0]["allowed_callers"] = [{"ae_title": "MODALITY1", "host": "127.0.0.1"}]
    with RadloopServer(tmp_path, cfg) as server:
        assert peers.echoscu("127.0.0.1", server.port, BRAIN_AE, calling_ae="MODALITY1").returncode == 0
        assert peers.echoscu("127.0.0.1", server.port, BRAIN_AE, calling_ae="INTRUDER").returncode != 0
        assert peers.echoscu("127.0.0.1", server.port, "NOT_OURS").returncode != 0
        log = server.log_text()
        assert "caller 'INTRUDER' from 127.0.0.1 is not allowed" in log
        assert "called AE 'NOT_OURS' is not one of ours" in log


def _all_sent(server: RadloopServer) -> bool:
    with Session(server.engine) as s:
        rows = s.exec(select(Delivery)).all()
        return bool(rows) and all(d.state == DeliveryState.sent for d in rows)


def _acknowledged_files(storescu_log: str) -> list[Path]:
    """Files storescu (-v) saw acknowledged with Success, in order."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["fsync", "commit"])
def test_kill9_during_transfer_loses_nothing_and_duplicates_nothing(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, tmp_path: Path, durability: str
) -> None:
    """Both durability modes keep the promise to a sender across ``kill -9``: every instance it
    saw acknowledged is indexed and whole on disk (``commit`` mode: written, not yet fsynced,
    which a killed process cannot lose; power loss is another matter, see the README)."""
    cfg = _config(orthanc_clean)
    cfg["dicom"]["durability"] = durability
    server = RadloopServer(tmp_path, cfg)
    server.start(timeout=START_TIMEOUT_S)
    cmd = [
        peers.require_binary("storescu"),
        "-v",
        "-R",
        "-aet",
        "STORESCU",
        "-aec",
        BRAIN_AE,
        "-to",
        "10",
        "-ta",
        "10",
        "+sd",
        "127.0.0.1",
        str(server.port),
        str(t1_series_dir),
    ]
    sender = subprocess.Popen(
        cmd, env=peers.peer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    instances_dir = server.settings.data_dir / "instances"
    peers.wait_for(
        lambda: sum(1 for _ in instances_dir.rglob("*.dcm")) >= 60,
        60,
        interval=0.01,
        what="60 instances stored",
    )
    server.kill9()
    out, _ = sender.communicate(timeout=60)
    acked = _acknowledged_files(out)
    assert 30 <= len(acked) < 170, f"{len(acked)} acknowledged; the kill should land mid-transfer"
    with Session(server.engine) as s:
        indexed = {i.sop_instance_uid: i for i in s.exec(select(Instance)).all()}
    for f in acked:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert uid in indexed, f"{f.name} was acknowledged but is not indexed"
        stored = server.settings.data_dir / indexed[uid].path
        assert stored.read_bytes()[128:132] == b"DICM"
        assert pydicom.dcmread(stored).SOPInstanceUID == uid

    server.start(timeout=START_TIMEOUT_S)  # restart; the sender sends the whole series again
    again = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
    assert again.returncode == 0, again.stderr
    peers.wait_for(lambda: _seg_instances(orthanc_clean), 240, interval=0.5, what="SEG after restart")
    peers.wait_for(lambda: all(j.state == JobState.succeeded for j in _jobs(server)), 60, what="jobs done")
    peers.wait_for(lambda: _all_sent(server), 60, what="outbox drained")
    server.stop()
    assert len(_jobs(server)) == 1
    assert len(_seg_instances(orthanc_clean)) == 1
    with Session(server.engine) as s:
        assert len(s.exec(select(Instance)).all()) == 170
