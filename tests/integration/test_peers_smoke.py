"""The real peers the integration tests rely on work, and DCMTK behaves as we assume.

Also pins down what DCMTK `storescu` does with the published TotalSegmentator files whose data
set has empty SOP Class/Instance UIDs, and how `send_raw_dataset` still puts one on the wire.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

import peers

pytestmark = pytest.mark.peers

T1_INSTANCES = 170
CT_SLICES = 20
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900


def test_orthanc_answers_rest_and_dicomweb_qido(orthanc_clean: peers.OrthancServer) -> None:
    system = orthanc_clean.get_json("/system")
    assert system["DicomAet"] == "ORTHANC"
    assert system["DicomPort"] == orthanc_clean.dicom_port
    studies = json.loads(
        orthanc_clean.request("GET", "/dicom-web/studies", headers={"Accept": "application/dicom+json"})
    )
    assert studies == []


def test_storescu_t1_series_into_orthanc(orthanc_clean: peers.OrthancServer, t1_series_dir: Path) -> None:
    proc = peers.storescu(t1_series_dir, peers.LOCALHOST, orthanc_clean.dicom_port, "ORTHANC")

    assert proc.returncode == 0, proc.stderr
    assert len(orthanc_clean.instances()) == T1_INSTANCES
    (series_id,) = orthanc_clean.series()
    assert len(orthanc_clean.series_info(series_id)["Instances"]) == T1_INSTANCES
    studies = json.loads(orthanc_clean.request("GET", "/dicom-web/studies"))
    assert len(studies) == 1


def test_storescu_sends_jpeg2000_as_is(orthanc_clean: peers.OrthancServer, ct_j2k_series_dir: Path) -> None:
    assert peers.storescu_propose_option([ct_j2k_series_dir]) == "-xv"

    proc = peers.storescu(ct_j2k_series_dir, peers.LOCALHOST, orthanc_clean.dicom_port, "ORTHANC")

    assert proc.returncode == 0, proc.stderr
    instance_ids = orthanc_clean.instances()
    assert len(instance_ids) == CT_SLICES
    syntaxes = {orthanc_clean.instance_metadata(i, "TransferSyntax") for i in instance_ids}
    assert syntaxes == {JPEG2000Lossless}
    stored = pydicom.dcmread(io.BytesIO(orthanc_clean.instance_file(instance_ids[0])))
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_storescu_default_proposal_cannot_send_jpeg2000(
    store_scp: peers.StoreSCP, ct_j2k_series_dir: Path
) -> None:
    """Without `-xv` storescu proposes only uncompressed syntaxes and cannot decode JPEG 2000."""
    first = sorted(ct_j2k_series_dir.iterdir())[0]

    proc = peers.storescu(first, peers.LOCALHOST, store_scp.port, store_scp.aet, propose=None)

    assert proc.returncode != 0
    assert "unable to convert dataset from 'JPEG 2000 (Lossless only)'" in proc.stderr
    assert store_scp.files() == []


def test_dciodvfy_reports_errors_as_a_list(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path, synthetic_ct_dir: Path, tmp_path: Path
) -> None:
    first = sorted(t1_series_dir.iterdir())[0]
    assert peers.storescu(first, peers.LOCALHOST, orthanc_clean.dicom_port, "ORTHANC").returncode == 0
    (instance_id,) = orthanc_clean.instances()
    stored = tmp_path / "t1.dcm"
    stored.write_bytes(orthanc_clean.instance_file(instance_id))

    errors = peers.dciodvfy(stored)

    assert isinstance(errors, list)
    assert all(line.startswith("Error") for line in errors)
    # The real scanner file is not perfect (e.g. Laterality present in GeneralSeries for MR).
    assert errors, peers.dciodvfy_report(stored)
    # Our synthetic CT is: benchmarks and tests may rely on it being valid.
    assert peers.dciodvfy(sorted(synthetic_ct_dir.iterdir())[0]) == []


def test_storescp_receives_files(store_scp: peers.StoreSCP, t1_series_dir: Path) -> None:
    files = sorted(t1_series_dir.iterdir())[:5]

    proc = peers.storescu(files, peers.LOCALHOST, store_scp.port, store_scp.aet)

    assert proc.returncode == 0, proc.stderr
    received = peers.wait_for(lambda: len(store_scp.files()) == 5 and store_scp.files(), 5, what="5 files")
    sent_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in received} == sent_uids


def test_orthanc_answers_c_find_only_from_declared_modality(
    orthanc_clean: peers.OrthancServer, t1_series_dir: Path
) -> None:
    first = sorted(t1_series_dir.iterdir())[0]
    assert peers.storescu(first, peers.LOCALHOST, orthanc_clean.dicom_port, "ORTHANC").returncode == 0

    def find(calling_ae: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            peers.require_binary("findscu"),
            "-v",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-aet",
            calling_ae,
            "-aec",
            "ORTHANC",
            "-to",
            "10",
            "-ta",
            "10",
            peers.LOCALHOST,
            str(orthanc_clean.dicom_port),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    # findscu exits 0 even when Orthanc aborts the association: read its output, not its status.
    rejected = find("NOT-DECLARED")
    assert "Find Response" not in rejected.stderr and "Find Failed" in rejected.stderr

    orthanc_clean.add_modality("RADLOOP_TEST", "RADLOOP_TEST", peers.LOCALHOST, peers.free_port())
    accepted = find("RADLOOP_TEST")
    assert "Find Response: 1 (Pending)" in accepted.stderr, accepted.stderr


# --------------------------------------------------------------------------- empty UIDs


def test_storescu_refuses_dataset_with_empty_sop_uids(
    store_scp: peers.StoreSCP, ct_bad_uid_dir: Path
) -> None:
    """storescu takes the SOP Class from the data set, not the file meta: empty → not sent."""
    first = sorted(ct_bad_uid_dir.iterdir())[0]
    target = (peers.LOCALHOST, store_scp.port, store_scp.aet)

    # -R (our default): refuses before associating.
    refused = peers.storescu(first, *target)
    assert refused.returncode == 1
    assert "F: unknown storage SOP class in file" in refused.stderr

    # -R -nh: ignores the file, then fails to associate with no presentation context.
    refused_nh = peers.storescu(first, *target, extra_args=("-nh",))
    assert refused_nh.returncode == 1
    assert "ignoring file" in refused_nh.stderr and "missing presentation contexts" in refused_nh.stderr

    # Without -R, a folder and -nh: nothing is sent, yet storescu exits 0. Never trust that status.
    silent = subprocess.run(
        [
            peers.require_binary("storescu"),
            "-xv",
            "-nh",
            "+sd",
            "-aec",
            store_scp.aet,
            peers.LOCALHOST,
            str(store_scp.port),
            str(ct_bad_uid_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=peers.peer_env(),
    )
    assert silent.returncode == 0
    assert silent.stderr.count("E: No presentation context for: (unknown SOP class)") == CT_SLICES
    assert store_scp.files() == []


def test_send_raw_dataset_puts_empty_uid_instance_on_the_wire(
    store_scp: peers.StoreSCP, orthanc_clean: peers.OrthancServer, ct_bad_uid_dir: Path
) -> None:
    first = sorted(ct_bad_uid_dir.iterdir())[0]
    meta = pydicom.filereader.read_file_meta_info(first)

    # Both peers answer 0xA900 "Data Set does not match SOP Class" (empty vs. the Affected UID)...
    status_scp = peers.send_raw_dataset(first, peers.LOCALHOST, store_scp.port, store_scp.aet)
    status_orthanc = peers.send_raw_dataset(first, peers.LOCALHOST, orthanc_clean.dicom_port, "ORTHANC")
    assert status_scp == status_orthanc == STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS

    # ...but storescp has written the file anyway (named after the Affected SOP Instance UID, with
    # a file meta rebuilt from the data set, so now empty too); Orthanc kept nothing.
    (received,) = store_scp.files()
    assert received.name == f"CT.{meta.MediaStorageSOPInstanceUID}"
    dataset = pydicom.dcmread(received)
    assert dataset.SOPInstanceUID == dataset.file_meta.MediaStorageSOPInstanceUID == ""
    assert dataset.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert orthanc_clean.instances() == []
