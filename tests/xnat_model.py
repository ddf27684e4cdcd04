"""The data side of the test XNAT server (`xnat_server.py`): XNAT's types read from its XSD files,
and an in-memory archive of projects, subjects, experiments, scans, resources and files.

The types come from the schema files only (`tests/data/xnat_schemas/`): a `PUT` naming an
`xsiType` the schemas do not define is refused, and "is this a session / scan / assessor" is
answered by following the schemas' `xs:extension` chain, as XNAT does. Identifiers follow
XNAT's conventions (`XNAT_S00001`, `XNAT_E00001`, resource ids are integers, scan ids are the
DICOM SeriesNumber on import).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pydicom

XS = "{http://www.w3.org/2001/XMLSchema}"
SCHEMA_DIR = Path(__file__).parent / "data" / "xnat_schemas"

# DICOM Modality -> (session type, scan type) used by the import service; others: otherDicom*.
_MODALITY_TYPES = {
    "MR": ("xnat:mrSessionData", "xnat:mrScanData"),
    "CT": ("xnat:ctSessionData", "xnat:ctScanData"),
    "PT": ("xnat:petSessionData", "xnat:petScanData"),
}
_OTHER_TYPES = ("xnat:otherDicomSessionData", "xnat:otherDicomScanData")


class XnatError(Exception):
    """A request the archive refuses; `status` is the HTTP status XNAT would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DataModel:
    """XNAT's types (`prefix:name`) and what each extends, read from XSD files."""

    def __init__(self, schema_files: Iterable[Path]) -> None:
        self.base: dict[str, str | None] = {}
        self.texts: dict[str, str] = {}
        self.root_types: list[str] = []  # types of the top-level elements: XNAT's searchable data types
        self.fields: dict[str, list[str]] = {}  # own simple fields (attributes, simple elements) per type
        for path in schema_files:
            self._read(path)

    def _read(self, path: Path) -> None:
        text = path.read_text(encoding="windows-1252")
        prefixes: dict[str, str] = {}
        for _event, (prefix, uri) in ElementTree.iterparse(io.StringIO(text), events=["start-ns"]):
            prefixes.setdefault(uri, prefix)
        root = ElementTree.fromstring(text)
        target = root.attrib["targetNamespace"]
        own = prefixes.get(target) or path.stem
        self.texts[path.stem] = text
        for element in root.findall(f"{XS}element"):
            if ":" in element.attrib.get("type", ""):
                self.root_types.append(element.attrib["type"])
        for ctype in root.iter(f"{XS}complexType"):
            name = ctype.attrib.get("name")
            if name is None:
                continue
            ext = ctype.find(f"{XS}complexContent/{XS}extension")
            self.base[f"{own}:{name}"] = ext.attrib["base"] if ext is not None else None
            body = ext if ext is not None else ctype
            simple = [a.attrib["name"] for a in body.iter(f"{XS}attribute") if "name" in a.attrib]
            simple += [
                e.attrib["name"]
                for e in body.iter(f"{XS}element")
                if e.attrib.get("type", "").startswith("xs:") and "name" in e.attrib
            ]
            self.fields[f"{own}:{name}"] = simple

    def exists(self, xsi_type: str) -> bool:
        return xsi_type in self.base

    def is_a(self, xsi_type: str, ancestor: str) -> bool:
        """True if `xsi_type` is `ancestor` or extends it (transitively)."""
        seen: str | None = xsi_type
        for _ in range(50):
            if seen is None:
                return False
            if seen == ancestor:
                return True
            seen = self.base.get(seen)
        return False

    def check(self, xsi_type: str, ancestor: str) -> str:
        """`xsi_type` if the schemas define it as a kind of `ancestor`; else a 400 error."""
        if not self.exists(xsi_type):
            raise XnatError(400, f"unknown data type {xsi_type!r}: no schema of this server defines it")
        if not self.is_a(xsi_type, ancestor):
            raise XnatError(400, f"{xsi_type} is not a {ancestor}")
        return xsi_type


def now_text() -> str:
    """A timestamp as XNAT writes `insert_date` in listings (`2024-05-01 12:00:00.123`)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class StoredFile:
    name: str
    data: bytes
    content: str = ""
    format: str = ""
    tags: str = ""

    @property
    def digest(self) -> str:
        return hashlib.md5(self.data).hexdigest()


@dataclass
class Resource:
    id: int
    label: str
    format: str = ""
    content: str = ""
    files: dict[str, StoredFile] = field(default_factory=dict)


@dataclass
class Scan:
    id: str
    xsi_type: str
    fields: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Experiment:
    id: str
    xsi_type: str
    project: str
    subject_id: str
    label: str
    insert_date: str
    fields: dict[str, str] = field(default_factory=dict)
    session_id: str = ""  # set on image assessors: the session they assess
    scans: dict[str, Scan] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Subject:
    id: str
    project: str
    label: str
    insert_date: str
    resources: dict[str, Resource] = field(default_factory=dict)


@dataclass
class Project:
    id: str
    name: str
    resources: dict[str, Resource] = field(default_factory=dict)


class Archive:
    """Projects and everything below them; every method takes the archive's lock."""

    def __init__(self, model: DataModel, site_id: str = "XNAT") -> None:
        self.model = model
        self.site_id = site_id
        self.lock = threading.RLock()
        self.projects: dict[str, Project] = {}
        self.subjects: dict[str, Subject] = {}
        self.experiments: dict[str, Experiment] = {}
        self._subject_numbers = itertools.count(1)
        self._experiment_numbers = itertools.count(1)
        self._resource_ids = itertools.count(1001)
        self.mutations: list[str] = []  # one line per change of the archive, for tests to compare

    # ------------------------------------------------------------------ lookups

    def project(self, project_id: str) -> Project:
        try:
            return self.projects[project_id]
        except KeyError:
            raise XnatError(404, f"project {project_id!r} not found") from None

    def subject(self, project_id: str | None, key: str) -> Subject:
        """A subject by ID, or by label within `project_id`."""
        found = self.subjects.get(key)
        if found is None and project_id is not None:
            found = next(
                (s for s in self.subjects.values() if s.project == project_id and s.label == key), None
            )
        if found is None or (project_id is not None and found.project != project_id):
            raise XnatError(404, f"subject {key!r} not found")
        return found

    def experiment(self, project_id: str | None, key: str) -> Experiment:
        """An experiment by ID, or by label within `project_id`."""
        found = self.experiments.get(key)
        if found is None and project_id is not None:
            found = next(
                (e for e in self.experiments.values() if e.project == project_id and e.label == key), None
            )
        if found is None or (project_id is not None and found.project != project_id):
            raise XnatError(404, f"experiment {key!r} not found")
        return found

    def sessions_of(self, project_id: str, subject_id: str | None = None) -> list[Experiment]:
        """The subject assessors (sessions) of a project, or of one of its subjects."""
        return [
            e
            for e in self.experiments.values()
            if e.project == project_id
            and not e.session_id
            and (subject_id is None or e.subject_id == subject_id)
        ]

    def assessors_of(self, session: Experiment) -> list[Experiment]:
        return [e for e in self.experiments.values() if e.session_id == session.id]

    # ------------------------------------------------------------------ changes

    def add_project(self, project_id: str, name: str = "") -> Project:
        with self.lock:
            project = self.projects.setdefault(project_id, Project(project_id, name or project_id))
            return project

    def create_subject(self, project_id: str, label: str) -> Subject:
        with self.lock:
            self.project(project_id)
            try:
                return self.subject(project_id, label)
            except XnatError:
                pass
            subject = Subject(
                f"{self.site_id}_S{next(self._subject_numbers):05d}", project_id, label, now_text()
            )
            self.subjects[subject.id] = subject
            self.mutations.append(f"create subject {project_id}/{label}")
            return subject

    def create_experiment(
        self,
        project_id: str,
        subject: Subject,
        label: str,
        xsi_type: str,
        fields: dict[str, str] | None = None,
        session: Experiment | None = None,
    ) -> Experiment:
        with self.lock:
            ancestor = "xnat:imageAssessorData" if session is not None else "xnat:subjectAssessorData"
            self.model.check(xsi_type, ancestor)
            if any(e.project == project_id and e.label == label for e in self.experiments.values()):
                raise XnatError(409, f"an experiment labelled {label!r} already exists in {project_id}")
            experiment = Experiment(
                f"{self.site_id}_E{next(self._experiment_numbers):05d}",
                xsi_type,
                project_id,
                subject.id,
                label,
                now_text(),
                dict(fields or {}),
                session_id=session.id if session else "",
            )
            self.experiments[experiment.id] = experiment
            self.mutations.append(f"create experiment {project_id}/{label} ({xsi_type})")
            return experiment

    def update_fields(self, experiment: Experiment, fields: dict[str, str]) -> None:
        with self.lock:
            changed = {k: v for k, v in fields.items() if experiment.fields.get(k) != v}
            if changed:
                experiment.fields.update(changed)
                self.mutations.append(f"update {experiment.id} {sorted(changed)}")

    def create_resource(
        self, owner: dict[str, Resource], label: str, format_: str = "", content: str = ""
    ) -> Resource:
        with self.lock:
            existing = owner.get(label)
            if existing is not None:
                return existing
            resource = Resource(next(self._resource_ids), label, format_, content)
            owner[label] = resource
            self.mutations.append(f"create resource {label}")
            return resource

    def put_file(self, resource: Resource, name: str, data: bytes, overwrite: bool, **meta: str) -> bool:
        """Store a file; an existing name needs `overwrite` (else 409). True if the bytes changed."""
        with self.lock:
            old = resource.files.get(name)
            if old is not None and not overwrite:
                raise XnatError(409, f"file {name!r} already exists in resource {resource.label!r}")
            resource.files[name] = StoredFile(name, data, **meta)
            self.mutations.append(f"{'replace' if old else 'add'} file {resource.label}/{name}")
            return old is None or old.data != data

    # ------------------------------------------------------------------ import service

    def import_zip(
        self, payload: bytes, project_id: str, subject_label: str, session_label: str, overwrite: str
    ) -> Experiment:
        """XNAT's DICOM-zip import straight into the archive: one scan per series, files in `DICOM`."""
        datasets = list(_dicom_in_zip(payload))
        if not datasets:
            raise XnatError(400, "the upload holds no DICOM file")
        first = datasets[0][1]
        session_type, scan_type = _MODALITY_TYPES.get(str(first.get("Modality", "")), _OTHER_TYPES)
        with self.lock:
            subject = self.create_subject(project_id, subject_label or str(first.get("PatientID", "")))
            session = self._import_target(project_id, subject, session_label, session_type, first, overwrite)
            for name, ds, raw in datasets:
                scan = self._import_scan(session, ds, scan_type)
                resource = self.create_resource(scan.resources, "DICOM", "DICOM", "RAW")
                if name not in resource.files or resource.files[name].data != raw:
                    self.put_file(resource, name, raw, overwrite=True, format="DICOM")
            return session

    def _import_target(
        self,
        project_id: str,
        subject: Subject,
        label: str,
        session_type: str,
        ds: pydicom.Dataset,
        overwrite: str,
    ) -> Experiment:
        label = label or str(ds.get("StudyInstanceUID", "")).replace(".", "_")
        try:
            session = self.experiment(project_id, label)
        except XnatError:
            return self.create_experiment(project_id, subject, label, session_type, _session_fields(ds))
        if overwrite not in ("append", "delete"):
            raise XnatError(409, f"session {label!r} exists; import with overwrite=append to add to it")
        self.update_fields(
            session, {k: v for k, v in _session_fields(ds).items() if not session.fields.get(k)}
        )
        return session

    def _import_scan(self, session: Experiment, ds: pydicom.Dataset, scan_type: str) -> Scan:
        series_uid = str(ds.SeriesInstanceUID)
        for scan in session.scans.values():
            if scan.fields.get("UID") == series_uid:
                return scan
        scan_id = str(ds.get("SeriesNumber", "") or len(session.scans) + 1)
        while scan_id in session.scans:
            scan_id += "1"
        scan = Scan(
            scan_id,
            self.model.check(scan_type, "xnat:imageScanData"),
            {
                "type": str(ds.get("SeriesDescription", "")),
                "series_description": str(ds.get("SeriesDescription", "")),
                "UID": series_uid,
                "modality": str(ds.get("Modality", "")),
            },
        )
        session.scans[scan_id] = scan
        self.mutations.append(f"create scan {session.label}/{scan_id}")
        return scan


def _session_fields(ds: pydicom.Dataset) -> dict[str, str]:
    date = str(ds.get("StudyDate", "") or "")
    return {
        "UID": str(ds.get("StudyInstanceUID", "")),
        "dcmAccessionNumber": str(ds.get("AccessionNumber", "") or ""),
        "dcmPatientId": str(ds.get("PatientID", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
        "date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "",
    }


def _dicom_in_zip(payload: bytes) -> Iterable[tuple[str, pydicom.Dataset, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile as e:
        raise XnatError(400, f"not a zip file: {e}") from e
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            raw = archive.read(info)
            try:
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
            yield Path(info.filename).name, ds, raw


def zip_files(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of `(archive path, bytes)` pairs (what XNAT sends for `.../files?format=zip`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def listing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """XNAT's listing envelope."""
    return {"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}}


def item(
    xsi_type: str, data_fields: dict[str, Any], children: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """XNAT's `?format=json` envelope of one object."""
    meta = {
        "xsi:type": xsi_type,
        "isHistory": False,
        "start_date": datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y"),
    }
    return {"items": [{"meta": meta, "data_fields": data_fields, "children": children or []}]}
