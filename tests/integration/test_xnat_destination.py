"""The ``xnat`` destination against the test XNAT server (tests/xnat_server.py), driven only through
the unmodified ``xnat`` client: where results land, what a second delivery changes (nothing),
the ROI-collection assessor and its fallback, credentials.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlmodel import Session, select

import peers
import xnat_helpers as h
from radloop.core.errors import DeliveryError
from radloop.core.models import Delivery, DeliveryState, Result
from radloop.core.settings import XnatDestination, load_settings
from radloop.xnat_plugin.client import roi_collection_label
from radloop.xnat_plugin.destination import XnatSender
from radloop_proc import RadloopServer
from xnat_server import XnatTestServer


@pytest.fixture
def xnat_server() -> Iterator[XnatTestServer]:
    """A test XNAT (core schemas only: no ROI-collection type) with an empty project BRAIN."""
    with XnatTestServer() as server:
        server.archive.add_project("BRAIN", "Brain AI research")
        yield server


@pytest.fixture
def roi_xnat_server() -> Iterator[XnatTestServer]:
    """A test XNAT that also plays the ICR ROI-collection plugin."""
    with XnatTestServer(roi_plugin=True) as server:
        server.archive.add_project("BRAIN")
        yield server


def _sender(server: XnatTestServer, **extra: object) -> XnatSender:
    config = load_settings(None, destinations=[h.destination(server, **extra)]).destinations[0]
    assert isinstance(config, XnatDestination)
    return XnatSender(config)


def test_result_lands_in_project_subject_session_and_redelivery_changes_nothing(
    xnat_server: XnatTestServer, tmp_path: Path
) -> None:
    case = h.stored_case(tmp_path / "data")
    header = case.header
    sender = _sender(
        xnat_server, subject_from="PatientID", session_from="AccessionNumber", import_source=True
    )

    first = sender.deliver(case.seg_path)
    archive = xnat_server.archive
    (subject,) = archive.subjects.values()
    assert (subject.project, subject.label) == ("BRAIN", "SYNTH-CT")
    session = archive.experiment("BRAIN", "SYNTH0001")
    assert session.xsi_type == "xnat:ctSessionData" and session.subject_id == subject.id
    assert session.fields["UID"] == header.StudyInstanceUID
    (scan,) = session.scans.values()  # the source series, through the import service
    assert scan.fields["UID"] == header.SeriesInstanceUID and len(scan.resources["DICOM"].files) == 12
    seg_name = f"{pydicom.dcmread(case.seg_path).SOPInstanceUID}.dcm"
    assert h.session_resource_files(xnat_server, "BRAIN", "SYNTH0001", "SEG") == {
        seg_name: case.seg_path.read_bytes()
    }
    assert archive.assessors_of(session) == []  # fallback: no assessor type in the core schemas
    assert first.changed

    before = list(archive.mutations)
    second = sender.deliver(case.seg_path)
    assert archive.mutations == before, "a second delivery must change nothing"
    assert not second.changed and second.skipped == [f"SEG/{seg_name}"]


def test_changed_result_with_the_same_uid_replaces_the_file(
    xnat_server: XnatTestServer, tmp_path: Path
) -> None:
    case = h.stored_case(tmp_path / "data")
    sender = _sender(xnat_server)
    sender.deliver(case.seg_path)
    ds = pydicom.dcmread(case.seg_path)
    ds.SeriesDescription = "threshold (test), corrected"
    ds.save_as(case.seg_path)
    report = sender.deliver(case.seg_path)
    session_label = case.header.StudyInstanceUID.replace(".", "_")
    files = h.session_resource_files(xnat_server, "BRAIN", session_label, "SEG")
    assert list(files.values()) == [case.seg_path.read_bytes()]
    assert report.uploaded and not report.created


def test_roi_collection_assessor_where_the_server_has_the_type(
    roi_xnat_server: XnatTestServer, tmp_path: Path
) -> None:
    case = h.stored_case(tmp_path / "data")
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    sender = _sender(roi_xnat_server, session_from="AccessionNumber")
    sender.deliver(case.seg_path)
    archive = roi_xnat_server.archive
    session = archive.experiment("BRAIN", "SYNTH0001")
    (assessor,) = archive.assessors_of(session)
    assert assessor.xsi_type == "icr:roiCollectionData"
    assert assessor.label == roi_collection_label("SEG", str(seg.SOPInstanceUID))
    assert assessor.fields == {"collectionType": "SEG", "seriesUID": str(seg.SeriesInstanceUID)}
    (stored,) = assessor.resources["SEG"].files.values()
    assert stored.data == case.seg_path.read_bytes()
    assert h.session_resource_files(roi_xnat_server, "BRAIN", "SYNTH0001", "SEG")  # and the session resource
    before = list(archive.mutations)
    sender.deliver(case.seg_path)
    assert archive.mutations == before


def test_labels_from_a_lookup_file(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    case = h.stored_case(tmp_path / "data")
    lookup = tmp_path / "pseudonyms.csv"
    lookup.write_text(
        f"StudyInstanceUID,subject,session\n{case.header.StudyInstanceUID},SUBJ-007,SUBJ-007_MR1\n"
    )
    _sender(xnat_server, subject_from="lookup", session_from="lookup", lookup_file=str(lookup)).deliver(
        case.seg_path
    )
    session = xnat_server.archive.experiment("BRAIN", "SUBJ-007_MR1")
    assert xnat_server.archive.subjects[session.subject_id].label == "SUBJ-007"

    other = h.stored_case(tmp_path / "data2", seed=1)
    with pytest.raises(DeliveryError, match="no subject label for StudyInstanceUID"):
        _sender(xnat_server, subject_from="lookup", lookup_file=str(lookup)).deliver(other.seg_path)


def test_netrc_login_and_credentials_never_logged(
    xnat_server: XnatTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    case = h.stored_case(tmp_path / "data")
    netrc_file = h.write_netrc(tmp_path / "netrc", xnat_server)
    config = {k: v for k, v in h.destination(xnat_server).items() if k not in ("user", "password")}
    caplog.set_level(logging.DEBUG)
    sender = _sender(xnat_server, **{**config, "netrc_file": str(netrc_file), "user": None, "password": None})
    sender.deliver(case.seg_path)
    assert xnat_server.archive.experiments, "delivered with the netrc login"

    wrong = h.write_netrc(tmp_path / "netrc-wrong", xnat_server, password="not-the-password-9f2c")
    with pytest.raises(DeliveryError, match="cannot log in") as failed:
        _sender(xnat_server, **{**config, "netrc_file": str(wrong), "user": None, "password": None}).deliver(
            case.seg_path
        )
    assert "not-the-password-9f2c" not in str(failed.value)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert h.XNAT_PASSWORD not in logged and "not-the-password-9f2c" not in logged

    shown = load_settings(None, destinations=[h.destination(xnat_server)]).model_dump(mode="json")
    assert h.XNAT_PASSWORD not in json.dumps(shown)


def test_missing_project_is_a_clear_delivery_error(xnat_server: XnatTestServer, tmp_path: Path) -> None:
    case = h.stored_case(tmp_path / "data")
    with pytest.raises(DeliveryError, match="project 'NOPE' does not exist"):
        _sender(xnat_server, project="NOPE").deliver(case.seg_path)


# ----------------------------------------------------------------------------- end to end (slow)


def _seg_volume_ml(path: Path) -> float:
    seg = hd.seg.segread(path)
    mask = seg.get_volume(combine_segments=True)
    return float(np.count_nonzero(mask.array)) * float(np.prod(mask.spacing)) / 1000.0


@pytest.mark.slow
@pytest.mark.peers
def test_brain_seg_from_radloop_serve_lands_in_xnat(
    xnat_server: XnatTestServer, t1_series_dir: Path, tmp_path: Path
) -> None:
    config = {
        "dicom": {
            "listeners": [
                {"ae_title": "RADLOOP_BRAIN", "pipelines": ["brain-extraction"], "quiet_period_s": 60}
            ]
        },
        "destinations": [h.destination(xnat_server, name="research-xnat", import_source=True)],
        "pipelines": {"destinations": {"brain-extraction": ["research-xnat"]}},
    }
    with RadloopServer(tmp_path, config) as server:
        t0 = time.monotonic()
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, "RADLOOP_BRAIN")
        assert sent.returncode == 0, sent.stderr

        def delivered() -> bool:
            with Session(server.engine) as s:
                rows = s.exec(select(Delivery)).all()
                return bool(rows) and all(d.state == DeliveryState.sent for d in rows)

        peers.wait_for(delivered, 300, interval=0.5, what=f"delivery to XNAT (log: {server.log_path})")
        print(f"\nT1 sent → brain SEG in XNAT: {time.monotonic() - t0:.1f} s")
        with Session(server.engine) as s:
            (result,) = s.exec(select(Result)).all()
        result_path = server.settings.data_dir / result.path
        destination_config = server.settings.destination("research-xnat")

    source = pydicom.dcmread(next(iter(sorted(t1_series_dir.iterdir()))), stop_before_pixels=True)
    archive = xnat_server.archive
    session = archive.experiment("BRAIN", source.StudyInstanceUID.replace(".", "_"))
    assert archive.subjects[session.subject_id].label == "d2n_Philips_3T_R571"
    assert session.xsi_type == "xnat:mrSessionData"
    (scan,) = session.scans.values()
    assert (
        scan.id == "1301" and scan.xsi_type == "xnat:mrScanData" and len(scan.resources["DICOM"].files) == 170
    )
    ((seg_name, seg_bytes),) = h.session_resource_files(xnat_server, "BRAIN", session.label, "SEG").items()
    seg_file = tmp_path / seg_name
    seg_file.write_bytes(seg_bytes)
    assert peers.dciodvfy(seg_file) == [], peers.dciodvfy_report(seg_file)
    seg = pydicom.dcmread(seg_file, stop_before_pixels=True)
    assert {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence} == {source.SeriesInstanceUID}
    assert 1000 <= _seg_volume_ml(seg_file) <= 1800
    assert archive.assessors_of(session) == []  # core schemas: the session resource is the fallback

    before = list(archive.mutations)
    assert isinstance(destination_config, XnatDestination)
    report = XnatSender(destination_config).deliver(result_path)  # the outbox sending it again
    assert archive.mutations == before and not report.changed
