"""``radloop run-pipeline NAME --input DIR --output DIR`` on folders laid out as the XNAT Container
Service mounts them: a session (``SCANS/<id>/DICOM/…``) or a scan resource (files directly)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

import peers
import xnat_helpers as h
from radloop.core.uids import derived_uid
from radloop.xnat_plugin.run_pipeline import NothingToRunError, find_series, run_on_folder


def _session_mount(root: Path, scans: dict[str, list[Path]]) -> Path:
    """An XNAT session folder: SCANS/<id>/DICOM/*.dcm plus the clutter a real one has."""
    for scan_id, files in scans.items():
        target = root / "SCANS" / scan_id / "DICOM"
        target.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, target / f.name)
        snapshots = root / "SCANS" / scan_id / "SNAPSHOTS"
        snapshots.mkdir()
        (snapshots / f"{scan_id}_t.gif").write_bytes(b"GIF89a not DICOM")
    (root / "RESOURCES" / "notes").mkdir(parents=True)
    (root / "RESOURCES" / "notes" / "readme.txt").write_text("not DICOM")
    return root


def _ct(tmp_path: Path, seed: int, n: int = 12) -> list[Path]:
    return peers.make_synthetic_ct_series(tmp_path / f"ct-{seed}", n=n, rows=64, cols=64, seed=seed)


def test_find_series_in_a_session_mount_and_a_scan_mount(tmp_path: Path) -> None:
    first, second = _ct(tmp_path, 0), _ct(tmp_path, 1, n=5)
    found = find_series(_session_mount(tmp_path / "session", {"2": first, "10": second}))
    assert [(m.scan_id, m.series.modality, len(m.series.paths)) for m in found] == [
        ("2", "CT", 12),
        ("10", "CT", 5),
    ]
    assert found[0].series.ref.SeriesInstanceUID == pydicom.dcmread(first[0]).SeriesInstanceUID
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in found[0].series.paths]
    assert numbers == sorted(numbers)
    (scan,) = find_series(first[0].parent)  # a mounted scan resource: files directly
    assert scan.scan_id is None and len(scan.series.paths) == 12


def test_run_on_a_session_mount_writes_outputs_where_the_handlers_look(tmp_path: Path) -> None:
    accepted, too_short = _ct(tmp_path, 0), _ct(tmp_path, 1, n=5)
    mount = _session_mount(tmp_path / "input", {"2": accepted, "3": too_short})
    run = run_on_folder(h.threshold_pipeline(), mount, tmp_path / "output")
    series_uid = str(pydicom.dcmread(accepted[0]).SeriesInstanceUID)
    sop_uid = derived_uid(f"ct-threshold:{series_uid}:0", "seg", "instance")  # what a server job would write
    assert run.outputs == [tmp_path / "output" / "SEG" / f"{sop_uid}.dcm"]
    seg = pydicom.dcmread(run.outputs[0])
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [m.scan_id for m in run.ran] == ["2"]
    assert run.skipped == [
        "scan 3 (CT, 5 files, 'Synthetic CT phantom'): 5 instances, fewer than the 8 required"
    ]

    only = run_on_folder(h.threshold_pipeline(), mount, tmp_path / "output-2", scan_ids=["3", "2"])
    assert [p.name for p in only.outputs] == [f"{sop_uid}.dcm"]
    with pytest.raises(NothingToRunError, match="scan 2 .*not among the scans asked for"):
        run_on_folder(h.threshold_pipeline(), mount, tmp_path / "output-3", scan_ids=["3"])


@pytest.mark.slow
@pytest.mark.peers
def test_cli_runs_brain_extraction_on_a_container_service_session_mount(
    t1_series_dir: Path, tmp_path: Path
) -> None:
    t1 = sorted(t1_series_dir.iterdir())
    mount = _session_mount(tmp_path / "input", {"1301": t1, "2": _ct(tmp_path, 0)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "radloop.cli",
            "run-pipeline",
            "brain-extraction",
            "--input",
            str(mount),
            "--output",
            str(tmp_path / "output"),
            "--scans=",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["ran_on"] == ["scan 1301 (MR, 170 files, 'ADNI_Sag3D MPRAGE')"]
    assert summary["skipped"] == ["scan 2 (CT, 12 files, 'Synthetic CT phantom'): Modality CT not in ['MR']"]
    (out,) = sorted((tmp_path / "output").rglob("*.dcm"))
    source = pydicom.dcmread(t1[0], stop_before_pixels=True)
    assert (
        out
        == tmp_path
        / "output"
        / "SEG"
        / f"{derived_uid(f'brain-extraction:{source.SeriesInstanceUID}:0', 'seg', 'instance')}.dcm"
    )
    assert peers.dciodvfy(out) == [], peers.dciodvfy_report(out)
    seg = pydicom.dcmread(out, stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
