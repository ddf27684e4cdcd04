"""The IHE ATNA audit trail against a real audit repository: Debian's rsyslog with its TLS input.

A real `radloop serve` runs deepbet on the real T1 series (storescu → job → SEG sent to Orthanc),
a reviewer opens the result with a signed launch link and signs out, a client queries QIDO-RS
and reads WADO-RS metadata. rsyslog (imtcp + gtls, client certificates checked against a CA made
by `openssl` here) must receive each of those events as a DICOM audit message (PS3.15 A.5 XML)
in an RFC 5424 message with octet-counted framing, the study's UID in its participant objects.

Then the repository is stopped for a minute (radloop's retry pause is capped at
`audit.retry_cap_s`, 2 s in this test, so it retries about 30 times meanwhile), radloop keeps
working and auditing, and after rsyslog restarts every message arrives:
none lost (every row id the database holds arrives) and none twice (each `sequenceId` once),
also across a restart of radloop itself.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from sqlmodel import Session, col, func, select

import peers
from audit_repository import Certificates, RsyslogServer, make_certificates
from radloop.core.models import AuditMessage, Delivery, DeliveryState, Job, JobState, Result
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers, pytest.mark.slow]

BRAIN_AE = "RADLOOP_BRAIN"
LAUNCH_KEY = "audit-tests-launch-key-0123456789abcdef"
REVIEWER = "dr.audit"
SOURCE_ID = "radloop-audit-test-node"
HEADERS = {"X-Radloop-Review": "1"}


@dataclass
class Site:
    server: RadloopServer
    rsyslog: RsyslogServer
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    result: Result


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("audit-certs"))


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    t1_series_dir: Path,
    certs: Certificates,
    orthanc: peers.OrthancServer,
) -> Iterator[Site]:
    """rsyslog with TLS, and `radloop serve` sending it audit messages; the T1 sent and its SEG delivered."""
    rsyslog = RsyslogServer(tmp_path_factory.mktemp("rsyslog"), certs).start()
    workdir = tmp_path_factory.mktemp("audit-serve")
    config = {
        "secret_key": "audit-tests-secret-key-0123456789abcdef",
        "dicom": {
            "listeners": [{"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60}]
        },
        "destinations": [orthanc.destination("pacs", accepts=["SEG"])],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
        "review": {"launch_key": LAUNCH_KEY},
        "audit": {
            "source_id": SOURCE_ID,
            "send_interval_s": 0.2,
            "retry_base_s": 0.5,
            "retry_cap_s": 2.0,
            "repository": {
                "host": "127.0.0.1",
                "port": rsyslog.port,
                "ca_file": str(certs.ca),
                "cert_file": str(certs.client_cert),
                "key_file": str(certs.client_key),
            },
        },
    }
    server = RadloopServer(workdir, config).start(timeout=240)
    try:
        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        result = peers.wait_for(
            lambda: _delivered_seg(server),
            300,
            interval=0.5,
            what=f"SEG sent to Orthanc (log: {server.log_path})",
        )
        first = pydicom.dcmread(sorted(t1_series_dir.iterdir())[0], stop_before_pixels=True)
        uids = (str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
        yield Site(server, rsyslog, *uids, str(first.PatientID), result)
    finally:
        server.stop()
        rsyslog.stop()


def _delivered_seg(server: RadloopServer) -> Result | None:
    with Session(server.engine) as s:
        job = s.exec(select(Job)).first()
        if job is None or job.state != JobState.succeeded:
            return None
        seg = s.exec(select(Result).where(Result.job_id == job.id, Result.kind == "SEG")).first()
        delivery = s.exec(select(Delivery).where(Delivery.result_id == (seg.id if seg else -1))).first()
        return seg if delivery is not None and delivery.state == DeliveryState.sent else None


def _review_and_query(site: Site, client: str = "audit-client") -> None:
    """A reviewer opens the result from a launch link and signs out; a token client queries and reads."""
    server = site.server
    url = server.cli("review-url", site.study_uid, "--reviewer", REVIEWER).stdout.strip()
    assert url.startswith("http"), url
    url = re.sub(r"^https?://[^/]+", server.api_url, url)
    browser = requests.Session()
    opened = browser.get(url, allow_redirects=False, timeout=30)
    assert opened.status_code == 303, opened.text
    view = browser.get(f"{server.api_url}/review/api/results/{site.result.id}", headers=HEADERS, timeout=120)
    assert view.status_code == 200, view.text
    assert browser.get(f"{server.api_url}/review/logout", timeout=30).status_code == 200
    token = {"Authorization": f"Bearer {server.create_token(client, 'viewer')}"}
    found = requests.get(
        f"{server.api_url}/dicomweb/studies", params={"PatientID": site.patient_id}, headers=token, timeout=30
    )
    assert found.status_code == 200 and len(found.json()) == 1, found.text
    one = f"studies/{site.study_uid}/series/{site.series_uid}/instances/{site.sop_uid}/metadata"
    meta = requests.get(f"{server.api_url}/dicomweb/{one}", headers=token, timeout=120)
    assert meta.status_code == 200, meta.text


def _rows(server: RadloopServer) -> list[AuditMessage]:
    with Session(server.engine) as s:
        return list(s.exec(select(AuditMessage).order_by(col(AuditMessage.id))).all())


def _pending(server: RadloopServer) -> int:
    with Session(server.engine) as s:
        return int(s.exec(select(func.count()).select_from(AuditMessage).where(AuditMessage.pending)).one())


def _received(rsyslog: RsyslogServer) -> dict[int, list[ET.Element]]:
    """sequenceId → the parsed audit messages rsyslog wrote with that id (more than one = a duplicate)."""
    out: dict[int, list[ET.Element]] = {}
    for msgid, sd, msg in rsyslog.messages():
        assert msgid == "IHE+RFC-3881", (msgid, sd)
        seq = re.fullmatch(r'\[meta sequenceId="(\d+)"\]', sd)
        assert seq is not None, sd
        out.setdefault(int(seq.group(1)), []).append(ET.fromstring(msg))
    return out


def _event(root: ET.Element) -> tuple[str, str]:
    ident = root.find("EventIdentification")
    assert ident is not None
    event_id = ident.find("EventID")
    assert event_id is not None
    return event_id.get("csd-code", ""), ident.get("EventActionCode", "")


def _check_structure(root: ET.Element, study_uid: str | None) -> None:
    """PS3.15 A.5.1: EventIdentification, ActiveParticipant(s), AuditSourceIdentification, objects."""
    tags = [child.tag for child in root]
    assert root.tag == "AuditMessage" and tags[0] == "EventIdentification", tags
    first_source = tags.index("AuditSourceIdentification")
    assert set(tags[1:first_source]) == {"ActiveParticipant"}, tags
    assert set(tags[first_source + 1 :]) <= {"ParticipantObjectIdentification"}, tags
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == SOURCE_ID  # type: ignore[union-attr]
    requestors = [p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert len(requestors) == 1, ET.tostring(root)
    if study_uid is not None:
        studies = [
            o.get("ParticipantObjectID")
            for o in root.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]
        ]
        assert studies == [study_uid], ET.tostring(root)


def test_flow_reaches_rsyslog_as_ps315_messages(site: Site) -> None:
    _review_and_query(site)
    peers.wait_for(lambda: _pending(site.server) == 0, 60, interval=0.2, what="every audit message sent")
    received = _received(site.rsyslog)
    by_event: dict[tuple[str, str], list[ET.Element]] = {}
    for copies in received.values():
        by_event.setdefault(_event(copies[0]), []).append(copies[0])
    for key, with_study in {
        ("110100", "E"): False,  # Application Activity: start
        ("110104", "C"): True,  # DICOM Instances Transferred: the T1 received (one message, not 170)
        ("110104", "R"): True,  # ... the SEG sent to Orthanc
        ("110103", "R"): True,  # DICOM Instances Accessed: the review view, WADO-RS metadata
        ("110112", "E"): False,  # Query: QIDO-RS
        ("110114", "E"): False,  # User Authentication: logout
        ("110113", "E"): False,  # Security Alert: the token created
    }.items():
        assert key in by_event, f"no {key} message in {sorted(by_event)}"
        for root in by_event[key]:
            _check_structure(root, site.study_uid if with_study else None)
    assert len(by_event[("110104", "C")]) == 1
    (received_t1,) = by_event[("110104", "C")]
    sop = received_t1.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "170"
    patient = [
        o
        for o in received_t1.findall("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCode") == "1"
    ]
    assert [p.get("ParticipantObjectID") for p in patient] == [site.patient_id]
    users = {p.get("UserID") for r in by_event[("110103", "R")] for p in r.findall("ActiveParticipant")}
    assert {REVIEWER, "token:audit-client"} <= users
    listed = site.server.cli("audit", "list", "--patient", site.patient_id, "--json")
    assert listed.returncode == 0 and '"110104"' in listed.stdout


def test_outage_loses_nothing_and_sends_nothing_twice(site: Site) -> None:
    peers.wait_for(lambda: _pending(site.server) == 0, 60, interval=0.2, what="a drained queue")
    site.rsyslog.stop()
    _review_and_query(site, "audit-client-2")  # radloop keeps working while the repository is away
    time.sleep(60.0)  # the minute; retries are capped at retry_cap_s = 2 s, so ~30 tries fail
    waiting = _pending(site.server)
    assert waiting >= 5, waiting  # view, logout, token created, query (WADO within access_window_s: no)
    failed = [r for r in _rows(site.server) if r.pending]
    assert all(r.attempts >= 1 and r.last_error for r in failed), [
        (r.id, r.attempts, r.last_error) for r in failed
    ]
    before = len(_received(site.rsyslog))
    site.rsyslog.start()
    peers.wait_for(
        lambda: _pending(site.server) == 0, 60, interval=0.2, what="the backlog sent after the outage"
    )
    # and across a restart of radloop (stop and start messages, and the queue it leaves)
    site.server.stop()
    site.server.start(timeout=240)
    _review_and_query(site, "audit-client-3")
    peers.wait_for(
        lambda: _pending(site.server) == 0, 60, interval=0.2, what="every message after the restart"
    )
    time.sleep(0.5)  # rsyslog writes what it received
    received = _received(site.rsyslog)
    rows = _rows(site.server)
    assert len(received) > before
    assert sorted(received) == [r.id for r in rows]  # none lost
    twice = {seq: len(copies) for seq, copies in received.items() if len(copies) > 1}
    assert twice == {}, f"sent more than once: {twice}"  # none twice
    starts_stops = [_event(c[0]) for c in received.values() if _event(c[0])[0] == "110100"]
    assert len(starts_stops) == 3  # start, stop, start
