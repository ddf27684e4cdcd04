"""DICOM audit messages (PS3.15 A.5) as rows, their XML, their RFC 5424/5425 form, and the sender's
contract with a repository that is down (a plain TCP peer here; rsyslog with TLS in
``tests/integration/test_audit_trail.py``)."""

from __future__ import annotations

import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select
from typer.testing import CliRunner

from radloop.cli import app as cli
from radloop.connector.outbound.audit_repository import AuditSender, frame, syslog_message
from radloop.core import atna, db
from radloop.core.db import session_scope
from radloop.core.models import AuditMessage, Instance, Series, Study
from radloop.core.settings import AuditRepository, AuditSettings, Settings, load_settings

STUDY = "1.2.826.0.1.3680043.8.498.1"
ORDER = [
    "EventIdentification",
    "ActiveParticipant",
    "AuditSourceIdentification",
    "ParticipantObjectIdentification",
]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Engine]:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    settings = load_settings(data_dir=str(tmp_path))
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with session_scope(engine) as s:
        study = Study(study_instance_uid=STUDY, patient_id="PID-7", patient_name="Doe^Jane")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid=STUDY + ".1", modality="MR")  # type: ignore[arg-type]
        s.add(series)
        s.flush()
        for i in range(3):
            s.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=f"{STUDY}.1.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    path="x",
                )
            )  # type: ignore[arg-type]
    return settings, engine


def _tags(root: ET.Element) -> list[str]:
    """Element names of ``root``'s children with repeats collapsed (the schema's order)."""
    names: list[str] = []
    for child in root:
        if not names or names[-1] != child.tag:
            names.append(child.tag)
    return names


def test_instances_transferred_has_the_ps315_structure(site: tuple[Settings, Engine]) -> None:
    settings, engine = site
    with session_scope(engine) as s:
        source = atna.dicom_peer("MODALITY\n<x>", requestor=True, role=atna.ROLE_SOURCE, address="10.0.0.5")
        dest = atna.radloop_process(["RADLOOP"], role=atna.ROLE_DESTINATION)
        msg = atna.instances_transferred(s, atna.EventAction.create, source, dest, [STUDY])
        row = atna.record(s, settings.audit, msg)
    root = ET.fromstring(row.xml)
    assert root.tag == "AuditMessage"
    assert _tags(root) == ORDER
    ident = root.find("EventIdentification")
    assert (
        ident is not None
        and ident.get("EventActionCode") == "C"
        and ident.get("EventOutcomeIndicator") == "0"
    )
    event = ident.find("EventID")
    assert event is not None and event.attrib == {
        "csd-code": "110104",
        "codeSystemName": "DCM",
        "originalText": "DICOM Instances Transferred",
    }
    parts = root.findall("ActiveParticipant")
    assert [p.get("UserIsRequestor") for p in parts] == ["true", "false"]
    assert parts[0].get("UserID") == "MODALITY\ufffd<x>"  # a control character cannot enter the XML
    assert parts[0].get("NetworkAccessPointTypeCode") == "2"
    role = parts[0].find("RoleIDCode")
    assert role is not None and role.get("csd-code") == "110153"
    src = root.find("AuditSourceIdentification")
    assert src is not None and src.get("AuditSourceID") == settings.audit.source_id
    objs = root.findall("ParticipantObjectIdentification")
    study = next(o for o in objs if o.get("ParticipantObjectID") == STUDY)
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    id_type = study.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("csd-code") == "110180"
    sop = study.find("ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "3"
    patient = next(o for o in objs if o.get("ParticipantObjectTypeCode") == "1")
    assert (
        patient.get("ParticipantObjectID") == "PID-7"
        and patient.findtext("ParticipantObjectName") == "Doe^Jane"
    )
    assert (row.event_id, row.user, row.patient_id, row.study_instance_uid) == (
        "110104",
        "MODALITY\n<x>",
        "PID-7",
        STUDY,
    )


@pytest.mark.parametrize(
    ("message", "event_id", "type_code"),
    [
        (atna.application_activity(True, ["RADLOOP"], "svc"), "110100", "110120"),
        (atna.user_authentication("alice", True), "110114", "110122"),
        (atna.user_authentication("alice", False), "110114", "110123"),
        (atna.query(atna.person("token:x"), "/dicomweb/studies?PatientID=1"), "110112", None),
        (
            atna.security_alert(atna.person("root"), atna.SECURITY_CONFIGURATION, "token:x", "revoked"),
            "110113",
            "110129",
        ),
    ],
)
def test_each_event_names_its_codes(
    site: tuple[Settings, Engine], message: atna.AuditMessage, event_id: str, type_code: str | None
) -> None:
    root = ET.fromstring(message.to_xml(site[0].audit))
    assert _tags(root)[:3] == ORDER[:3]
    assert root.find("EventIdentification/EventID").get("csd-code") == event_id  # type: ignore[union-attr]
    found = root.find("EventIdentification/EventTypeCode")
    assert (found.get("csd-code") if found is not None else None) == type_code
    assert sum(p.get("UserIsRequestor") == "true" for p in root.findall("ActiveParticipant")) == 1


def test_query_carries_the_query_base64(site: tuple[Settings, Engine]) -> None:
    root = ET.fromstring(atna.query(atna.person("u"), "/dicomweb/studies?PatientID=X").to_xml(site[0].audit))
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == atna.STUDY_ROOT_FIND
    import base64

    assert base64.b64decode(obj.findtext("ParticipantObjectQuery") or "") == b"/dicomweb/studies?PatientID=X"


def test_syslog_form_is_rfc5424_with_octet_counting(site: tuple[Settings, Engine]) -> None:
    settings, engine = site
    with session_scope(engine) as s:
        row = atna.record(
            s, settings.audit, atna.user_authentication("bob", True, outcome=atna.Outcome.minor_failure)
        )
    message = syslog_message(row, "host.example", "123")
    header = re.match(
        rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) host\.example radloop 123 IHE\+RFC-3881 "
        rb'\[meta sequenceId="(\d+)"\] \xef\xbb\xbf<AuditMessage>',
        message,
    )
    assert header is not None, message[:200]
    assert int(header.group(1)) == 10 * 8 + 4  # facility authpriv, severity warning for a minor failure
    assert int(header.group(3)) == row.id
    framed = frame(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(message)


class _Collector:
    """A plain-TCP syslog peer that reads octet-counted frames until the client closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            with conn:
                while chunk := conn.recv(65536):
                    data += chunk
            while data:
                length, _, data = data.partition(b" ")
                self.frames.append(data[: int(length)])
                data = data[int(length) :]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def collector() -> Iterator[_Collector]:
    c = _Collector()
    yield c
    c.close()


def _pending(engine: Engine) -> int:
    with session_scope(engine) as s:
        return len(s.exec(select(AuditMessage).where(AuditMessage.pending)).all())


def test_sender_marks_sent_only_after_the_repository_took_them(
    site: tuple[Settings, Engine], collector: _Collector
) -> None:
    settings, engine = site
    with session_scope(engine) as s:
        for user in ("a", "b", "c"):
            atna.record(s, settings.audit, atna.user_authentication(user, True))
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    down = AuditSettings(
        repository=AuditRepository(host="127.0.0.1", port=dead_port, tls=False), retry_base_s=0.01
    )
    assert AuditSender(down, engine).tick() == 0
    assert _pending(engine) == 3  # unreachable: nothing lost, nothing marked
    with session_scope(engine) as s:
        rows = s.exec(select(AuditMessage)).all()
        assert all(r.attempts == 1 and "refused" in r.last_error.lower() for r in rows)
    up = AuditSettings(repository=AuditRepository(host="127.0.0.1", port=collector.port, tls=False))
    sender = AuditSender(up, engine)
    assert sender.tick() == 3
    assert sender.tick() == 0  # nothing twice
    assert _pending(engine) == 0
    assert len(collector.frames) == 3
    ids = [re.search(rb'sequenceId="(\d+)"', f).group(1) for f in collector.frames]  # type: ignore[union-attr]
    assert len(set(ids)) == 3


def test_audit_list_filters_by_user_patient_and_since(site: tuple[Settings, Engine]) -> None:
    settings, engine = site
    with session_scope(engine) as s:
        atna.record(s, settings.audit, atna.instances_accessed(s, atna.person("alice"), [STUDY]))
        atna.record(s, settings.audit, atna.user_authentication("bob", True))
    runner = CliRunner()

    def listed(*args: str) -> list[dict[str, object]]:
        result = runner.invoke(cli, ["audit", "list", "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)  # type: ignore[no-any-return]

    assert [r["user"] for r in listed()] == ["bob", "alice"]
    assert [r["event_id"] for r in listed("--user", "alice")] == ["110103"]
    assert [r["user"] for r in listed("--patient", "PID-7")] == ["alice"]
    assert listed("--since", "2999-01-01") == []
    assert "xml" in listed("--xml")[0] and listed("--xml")[0]["xml"].startswith("<AuditMessage>")  # type: ignore[union-attr]
    table = runner.invoke(cli, ["audit", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "110114" in table.output and "bob" in table.output


def test_log_filter_masks_patient_attributes_in_query_strings() -> None:
    import logging

    from radloop.core.logging import RedactPatientQuery

    record = logging.LogRecord(
        "x",
        logging.WARNING,
        __file__,
        1,
        "poll failed: 404 for url: %s",
        ("http://pacs/studies?PatientID=P%5E1&00100010=Doe",),
        None,
    )
    assert RedactPatientQuery().filter(record)
    assert record.getMessage() == "poll failed: 404 for url: http://pacs/studies?PatientID=***&00100010=***"


def test_worker_logging_silences_the_warning_that_quotes_a_patient_name() -> None:
    import warnings

    from radloop.core.logging import configure_logging

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_logging("WARNING")
        warnings.warn(
            'The string "d2n_Philips_3T_R571" is unlikely to represent the intended person name',
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]
