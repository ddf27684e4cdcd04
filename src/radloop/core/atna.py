"""DICOM audit messages (PS3.15 Annex A.5, the IHE ATNA audit trail), queued in ``audit_message``.

An :class:`AuditMessage` is one event in the standard's words: ``EventIdentification`` (EventID,
EventActionCode, EventOutcomeIndicator, EventTypeCode), one ``ActiveParticipant`` per person or
process taking part, ``AuditSourceIdentification`` (which radloop node wrote it) and one
``ParticipantObjectIdentification`` per study, patient, query or other object it touched.
:func:`record` renders it as the standard's XML and adds it to a database session, in the
transaction of the action it records where the caller has one; the sender
(:mod:`radloop.connector.outbound.audit_repository`) delivers the rows to a syslog repository.

The builders below (:func:`instances_transferred`, :func:`instances_accessed`, :func:`query`,
:func:`user_authentication`, :func:`export`, :func:`security_alert`, :func:`application_activity`)
fill each event's required participants as PS3.15 A.5.3 lists them. Audit messages carry PHI
(patient IDs and names) by design: they go to the audit repository and the database, never to logs.
"""

from __future__ import annotations

import base64
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from sqlmodel import Session, col, func, select

from radloop.core.models import AuditMessage as AuditMessageRow
from radloop.core.models import Instance, Series, Study, utcnow
from radloop.core.settings import AuditSettings


@dataclass(frozen=True)
class Code:
    """A coded value as the audit schema writes it: ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    text: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        """Add this code as the child ``tag`` of ``parent``."""
        return ET.SubElement(
            parent, tag, {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.text}
        )


def dcm(code: str, text: str) -> Code:
    """A code of the DICOM Controlled Terminology (PS3.16, scheme ``DCM``)."""
    return Code(code, "DCM", text)


# EventID (PS3.15 A.5.3)
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
EXPORT = dcm("110106", "Export")
SECURITY_ALERT = dcm("110113", "Security Alert")
QUERY = dcm("110112", "Query")
USER_AUTHENTICATION = dcm("110114", "User Authentication")
# EventTypeCode
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")
SECURITY_CONFIGURATION = dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")
# RoleIDCode of an ActiveParticipant
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")
ROLE_DESTINATION_MEDIA = dcm("110154", "Destination Media")
# ParticipantObjectIDTypeCode
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""SOP Class UID a query names: Study Root Query/Retrieve Information Model - FIND (also for QIDO-RS)."""


class EventAction(StrEnum):
    """EventActionCode: Create, Read, Update, Delete, Execute."""

    create = "C"
    read = "R"
    update = "U"
    delete = "D"
    execute = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator."""

    success = 0
    minor_failure = 4
    serious_failure = 8
    major_failure = 12


@dataclass(frozen=True)
class Participant:
    """An ``ActiveParticipant``: a person or process taking part (``requestor`` = it started the event)."""

    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str = ""
    user_name: str = ""
    network_access_point: str = ""

    def element(self, parent: ET.Element) -> None:
        """Add this participant to ``parent``."""
        attrs = {"UserID": _text(self.user_id) or "unknown"}
        if self.alternative_user_id:
            attrs["AlternativeUserID"] = _text(self.alternative_user_id)
        if self.user_name:
            attrs["UserName"] = _text(self.user_name)
        attrs["UserIsRequestor"] = "true" if self.requestor else "false"
        if self.network_access_point:
            attrs["NetworkAccessPointID"] = _text(self.network_access_point)
            is_ip = bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", self.network_access_point))
            attrs["NetworkAccessPointTypeCode"] = "2" if is_ip else "1"  # 2 = IP address, 1 = machine name
        node = ET.SubElement(parent, "ActiveParticipant", attrs)
        if self.role is not None:
            self.role.element(node, "RoleIDCode")


@dataclass(frozen=True)
class ParticipantObject:
    """A ``ParticipantObjectIdentification``: a study, a patient, a query or another object."""

    object_id: str
    type_code: int  # 1 person, 2 system object
    role: int  # 1 patient, 3 report, 13 security resource, 24 query
    id_type: Code
    name: str = ""
    query: bytes = b""
    sop_classes: tuple[tuple[str, int], ...] = ()
    details: tuple[tuple[str, str], ...] = ()

    def element(self, parent: ET.Element) -> None:
        """Add this object to ``parent`` in the schema's order of children."""
        node = ET.SubElement(
            parent,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": _text(self.object_id),
                "ParticipantObjectTypeCode": str(self.type_code),
                "ParticipantObjectTypeCodeRole": str(self.role),
            },
        )
        self.id_type.element(node, "ParticipantObjectIDTypeCode")
        if self.name:
            ET.SubElement(node, "ParticipantObjectName").text = _text(self.name)
        if self.query:
            ET.SubElement(node, "ParticipantObjectQuery").text = base64.b64encode(self.query).decode("ascii")
        for kind, value in self.details:
            ET.SubElement(
                node,
                "ParticipantObjectDetail",
                {"type": kind, "value": base64.b64encode(value.encode("utf-8")).decode("ascii")},
            )
        if self.sop_classes:
            description = ET.SubElement(node, "ParticipantObjectDescription")
            for uid, count in self.sop_classes:
                ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})


@dataclass(frozen=True)
class AuditMessage:
    """One DICOM audit message before it is rendered (see :func:`record`)."""

    event_id: Code
    action: EventAction
    participants: tuple[Participant, ...]
    outcome: Outcome = Outcome.success
    event_types: tuple[Code, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    outcome_description: str = ""
    at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        _check_participants(self.participants)

    @property
    def requestor(self) -> str:
        """The UserID of the participant that started the event (what ``audit list --user`` matches)."""
        return next((p.user_id for p in self.participants if p.requestor), "")

    def to_xml(self, source: AuditSettings) -> str:
        """The message as PS3.15 A.5.1 XML (``AuditMessage`` root, no namespace)."""
        root = ET.Element("AuditMessage")
        ident = ET.SubElement(
            root,
            "EventIdentification",
            {
                "EventActionCode": self.action.value,
                "EventDateTime": self.at.isoformat(timespec="milliseconds"),
                "EventOutcomeIndicator": str(int(self.outcome)),
            },
        )
        self.event_id.element(ident, "EventID")
        for code in self.event_types:
            code.element(ident, "EventTypeCode")
        if self.outcome_description:
            ET.SubElement(ident, "EventOutcomeDescription").text = _text(self.outcome_description)
        for participant in self.participants:
            participant.element(root)
        src_attrs = {"AuditSourceID": source.source_id}
        if source.enterprise_site_id:
            src_attrs["AuditEnterpriseSiteID"] = source.enterprise_site_id
        src = ET.SubElement(root, "AuditSourceIdentification", src_attrs)
        Code("4", "DCM", "Application Server Process or Thread").element(src, "AuditSourceTypeCode")
        for obj in self.objects:
            obj.element(root)
        return ET.tostring(root, encoding="unicode")


def _check_participants(participants: Sequence[Participant]) -> None:
    if not participants:
        raise ValueError("an audit message needs at least one ActiveParticipant")


_NOT_XML = re.compile("[\x00-\x1f\x7f\ufffe\uffff]")


def _text(value: str) -> str:
    """``value`` without control characters (XML 1.0 cannot hold most; a peer may send any byte)."""
    return _NOT_XML.sub("\ufffd", value)[:1024]


def record(session: Session, settings: AuditSettings, message: AuditMessage) -> AuditMessageRow:
    """Render ``message`` and add it to ``session`` as a pending ``audit_message`` row (flushed)."""
    patient = next((o.object_id for o in message.objects if o.id_type == PATIENT_NUMBER), "")
    study = next((o.object_id for o in message.objects if o.id_type == STUDY_INSTANCE_UID), "")
    row = AuditMessageRow(
        at=message.at,
        event_id=message.event_id.code,
        event_action=message.action.value,
        outcome=int(message.outcome),
        user=message.requestor[:200],
        patient_id=patient[:200],
        study_instance_uid=study[:64],
        xml=message.to_xml(settings),
        pending=True,
        next_attempt_at=message.at,
    )
    session.add(row)
    session.flush()
    return row


# --------------------------------------------------------------------------- participants


def radloop_process(
    ae_titles: Iterable[str] = (), *, requestor: bool = False, role: Code | None = None
) -> Participant:
    """radloop itself as a participant: its AE titles (``AETITLES=`` form) and process id."""
    titles = sorted(set(ae_titles))
    return Participant(
        user_id="radloop",
        alternative_user_id=f"AETITLES={';'.join(titles)}" if titles else str(os.getpid()),
        requestor=requestor,
        role=role,
    )


def person(user: str, *, address: str = "", role: Code | None = None) -> Participant:
    """A person or a token-holding client that requested the event."""
    return Participant(user_id=user, requestor=True, network_access_point=address, role=role)


def dicom_peer(ae_title: str, *, requestor: bool, role: Code, address: str = "") -> Participant:
    """A DICOM application entity (a modality, a PACS) as a participant."""
    return Participant(
        user_id=ae_title,
        alternative_user_id=f"AETITLES={ae_title}",
        requestor=requestor,
        role=role,
        network_access_point=address,
    )


# --------------------------------------------------------------------------- participant objects


def study_objects(session: Session, study_uids: Iterable[str]) -> tuple[ParticipantObject, ...]:
    """A Study object (with its SOP classes and instance counts) and a Patient object per study,
    read from the index; a study radloop does not hold is named by its UID alone."""
    objects: list[ParticipantObject] = []
    patients: dict[str, ParticipantObject] = {}
    for uid in dict.fromkeys(study_uids):
        study = session.exec(select(Study).where(Study.study_instance_uid == uid)).first()
        classes: tuple[tuple[str, int], ...] = ()
        if study is not None:
            counted = session.exec(
                select(Instance.sop_class_uid, func.count(col(Instance.id)))
                .join(Series, col(Series.id) == col(Instance.series_id))
                .where(Series.study_id == study.id)
                .group_by(col(Instance.sop_class_uid))
            ).all()
            classes = tuple((str(c), int(n)) for c, n in counted if c)
            if study.patient_id and study.patient_id not in patients:
                patients[study.patient_id] = patient_object(study.patient_id, study.patient_name)
        objects.append(
            ParticipantObject(uid, type_code=2, role=3, id_type=STUDY_INSTANCE_UID, sop_classes=classes)
        )
    return tuple(objects) + tuple(patients.values())


def patient_object(patient_id: str, patient_name: str = "") -> ParticipantObject:
    """The Patient participant object (ParticipantObjectTypeCode 1, role 1)."""
    return ParticipantObject(patient_id, type_code=1, role=1, id_type=PATIENT_NUMBER, name=patient_name)


# --------------------------------------------------------------------------- events (PS3.15 A.5.3)


def application_activity(started: bool, ae_titles: Iterable[str], launcher: str) -> AuditMessage:
    """A.5.3.1 Application Activity: radloop started or stopped (``launcher`` = the OS user)."""
    return AuditMessage(
        APPLICATION_ACTIVITY,
        EventAction.execute,
        (radloop_process(ae_titles, role=ROLE_APPLICATION), person(launcher, role=ROLE_APPLICATION_LAUNCHER)),
        event_types=(APPLICATION_START if started else APPLICATION_STOP,),
    )


def instances_transferred(
    session: Session,
    action: EventAction,
    source: Participant,
    destination: Participant,
    study_uids: Iterable[str],
    outcome: Outcome = Outcome.success,
    description: str = "",
) -> AuditMessage:
    """A.5.3.4 DICOM Instances Transferred: ``create`` when radloop received them, ``read`` when it sent."""
    return AuditMessage(
        INSTANCES_TRANSFERRED,
        action,
        (source, destination),
        outcome=outcome,
        objects=study_objects(session, study_uids),
        outcome_description=description,
    )


def instances_accessed(session: Session, user: Participant, study_uids: Iterable[str]) -> AuditMessage:
    """A.5.3.5 DICOM Instances Accessed: a person (or client) read the studies' instances."""
    return AuditMessage(
        INSTANCES_ACCESSED,
        EventAction.read,
        (user, radloop_process()),
        objects=study_objects(session, study_uids),
    )


def query(user: Participant, query_text: str, sop_class_uid: str = STUDY_ROOT_FIND) -> AuditMessage:
    """A.5.3.12 Query: ``query_text`` (the QIDO-RS path and query, or the C-FIND keys) answered."""
    obj = ParticipantObject(
        sop_class_uid, type_code=2, role=3, id_type=SOP_CLASS_UID, query=query_text.encode("utf-8")
    )
    return AuditMessage(QUERY, EventAction.execute, (user, radloop_process()), objects=(obj,))


def user_authentication(
    user: str, login: bool, *, address: str = "", outcome: Outcome = Outcome.success, description: str = ""
) -> AuditMessage:
    """A.5.3.14 User Authentication: a login, logout or failed login at radloop (the node)."""
    return AuditMessage(
        USER_AUTHENTICATION,
        EventAction.execute,
        (person(user, address=address), radloop_process()),
        outcome=outcome,
        event_types=(LOGIN if login else LOGOUT,),
        outcome_description=description,
    )


def export(session: Session, user: Participant, destination: str, study_uids: Iterable[str]) -> AuditMessage:
    """A.5.3.7 Export: studies written out of radloop (a training dataset) to ``destination``."""
    media = Participant(user_id=destination, requestor=False, role=ROLE_DESTINATION_MEDIA)
    return AuditMessage(EXPORT, EventAction.read, (user, media), objects=study_objects(session, study_uids))


def security_alert(
    user: Participant, alert: Code, subject: str, description: str, outcome: Outcome = Outcome.success
) -> AuditMessage:
    """A.5.3.11 Security Alert: a security or software configuration change (``subject`` names what)."""
    obj = ParticipantObject(
        subject, type_code=2, role=13, id_type=URI, details=(("Alert Description", description),)
    )
    return AuditMessage(
        SECURITY_ALERT,
        EventAction.execute,
        (user, radloop_process()),
        outcome=outcome,
        event_types=(alert,),
        objects=(obj,),
        outcome_description=description,
    )
