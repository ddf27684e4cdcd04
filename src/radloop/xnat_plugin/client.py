"""Talking to an XNAT server through the ``xnat`` client (xnatpy): the only module that imports it.

:func:`connect` logs in with the destination's credentials and yields an :class:`XnatArchive`
whose methods do what radloop needs, each idempotent so that a re-delivery or a restarted
watcher updates rather than duplicates:

* find or create a subject and an image session (typed by modality: ``xnat:mrSessionData`` …),
* send a source series through XNAT's import service (skipped when a scan with its
  SeriesInstanceUID is already in the session),
* store a result file in a resource (skipped when the same bytes are already there, replaced
  when they differ),
* create an ROI collection assessor (``icr:roiCollectionData``) for SEG and RTSTRUCT where the
  server's schemas define that type, i.e. where the ICR ROI-collection plugin is installed.

Credentials come from the settings (user + password) or a netrc file, resolved here so that the
client never prompts; they are never logged (xnatpy logs through a logger of ours held at WARNING).
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import xnat
import xnat.exceptions

from radloop.core.errors import DeliveryError
from radloop.core.settings import XnatDestination
from radloop.xnat_plugin.labels import ROI_COLLECTION_TYPES, StudyPlace, resource_label, xnat_label

log = logging.getLogger(__name__)
_XNATPY_LOG = logging.getLogger("radloop.xnat_plugin.xnatpy")
_XNATPY_LOG.setLevel(logging.WARNING)

ROI_COLLECTION_TYPE = "icr:roiCollectionData"
OTHER_SESSION_TYPE = "xnat:otherDicomSessionData"
_SESSION_TYPE_BY_MODALITY = {
    "MR": "xnat:mrSessionData",
    "CT": "xnat:ctSessionData",
    "PT": "xnat:petSessionData",
    "US": "xnat:usSessionData",
    "CR": "xnat:crSessionData",
    "DX": "xnat:dxSessionData",
    "MG": "xnat:mgSessionData",
    "NM": "xnat:nmSessionData",
    "XA": "xnat:xaSessionData",
}
_CLIENT_ERRORS = (xnat.exceptions.XNATError, requests.RequestException)
_LOGIN_ERRORS = (*_CLIENT_ERRORS, OSError)  # a bad CA bundle path, a refused socket


class XnatClientError(DeliveryError):
    """The XNAT server could not be reached, refused the login, or refused a request."""


@dataclass(frozen=True)
class SourceSeries:
    """A source series held locally: its SeriesInstanceUID, Modality and files."""

    series_instance_uid: str
    modality: str
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ResultFile:
    """A result DICOM file and what it is: its kind (SEG, RTSTRUCT, SR, SC) and UIDs."""

    path: Path
    kind: str
    sop_instance_uid: str
    series_instance_uid: str

    @property
    def name(self) -> str:
        """Its file name in XNAT: ``<SOPInstanceUID>.dcm`` (so a re-delivery finds it)."""
        return f"{self.sop_instance_uid}.dcm"


@dataclass
class StoreReport:
    """What storing one result changed on the server (empty lists: nothing changed)."""

    created: list[str]
    uploaded: list[str]
    skipped: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.created or self.uploaded)


def credentials(config: XnatDestination) -> tuple[str, str]:
    """(user, password) from the settings, else from the netrc file (``netrc_file``, $NETRC, ~/.netrc).

    The netrc entry is looked up as xnatpy does, by ``host:port``, then by host alone.
    """
    if config.password is not None and config.user:
        return config.user, config.password.get_secret_value()
    path = config.netrc_file or Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    parts = urlsplit(config.url)
    try:
        entries = netrc.netrc(str(path))
    except OSError as e:
        raise XnatClientError(f"no XNAT password in settings and cannot read netrc file {path}: {e}") from e
    except netrc.NetrcParseError as e:  # its message may quote a token of the file: not repeated here
        raise XnatClientError(f"cannot parse netrc file {path} (line {e.lineno})") from None
    for machine in (parts.netloc, parts.hostname or ""):
        found = entries.authenticators(machine)
        if found and found[0] and found[2] and (not config.user or found[0] == config.user):
            return found[0], found[2]
    raise XnatClientError(f"no login for {parts.netloc} in netrc file {path}")


@contextmanager
def connect(config: XnatDestination) -> Iterator[XnatArchive]:
    """Log in to the destination's server; the session is closed on leaving the block."""
    user, password = credentials(config)
    try:
        session = xnat.connect(
            config.url,
            user=user,
            password=password,
            verify=config.verify_tls,
            logger=_XNATPY_LOG,
            default_timeout=config.timeout_s,
            pilot_timeout=config.timeout_s,
        )
    except _LOGIN_ERRORS as e:
        raise XnatClientError(f"cannot log in to XNAT at {config.url} as {user}: {_short(e)}") from e
    try:
        yield XnatArchive(session, config)
    except _CLIENT_ERRORS as e:
        raise XnatClientError(f"XNAT at {config.url}: {_short(e)}") from e
    finally:
        try:
            session.disconnect()
        except _CLIENT_ERRORS as e:  # logging out is a notification: it never breaks the flow
            log.warning("logging out of XNAT at %s failed: %s", config.url, _short(e))


class XnatArchive:
    """One logged-in XNAT session; see the module docstring for what each method guarantees."""

    def __init__(self, session: Any, config: XnatDestination) -> None:
        self.session = session
        self.config = config

    # ------------------------------------------------------------------ reading

    def has_type(self, xsi_type: str) -> bool:
        """Whether the server's schemas define ``xsi_type`` (e.g. ``icr:roiCollectionData``)."""
        return xsi_type in self.session.XNAT_CLASS_LOOKUP

    def project(self, project_id: str) -> Any:
        """The project; XnatClientError if it does not exist or is not visible to us."""
        projects = self.session.projects
        projects.clearcache()
        if project_id not in projects:
            raise XnatClientError(f"XNAT project {project_id!r} does not exist or this user cannot see it")
        return projects[project_id]

    def find_session(self, project: Any, label: str) -> Any | None:
        """The experiment labelled ``label`` in ``project``, or None."""
        experiments = project.experiments
        experiments.clearcache()
        return experiments.get(label)

    def sessions(self, project_id: str) -> list[dict[str, str]]:
        """The project's experiments as listing rows: ID, label, xsiType, insert_date, subject_label."""
        rows = self.session.get_json(
            f"/data/projects/{project_id}/experiments",
            query={"columns": "ID,label,xsiType,insert_date,subject_label"},
        )
        return [{k: str(v) for k, v in row.items()} for row in rows["ResultSet"]["Result"]]

    def experiment(self, experiment_id: str) -> Any:
        """An experiment by its ID (e.g. ``XNAT_E00001``)."""
        return self.session.create_object(f"/data/experiments/{experiment_id}")

    # ------------------------------------------------------------------ subjects and sessions

    def ensure_session(self, place: StudyPlace, modality: str, fields: dict[str, str]) -> Any:
        """The session of ``place``, created (with its subject) when missing."""
        project = self.project(place.project)
        existing = self.find_session(project, place.session)
        if existing is not None:
            return existing
        subjects = project.subjects
        subjects.clearcache()
        subject = subjects.get(place.subject)
        if subject is None:
            subject = self.session.classes.SubjectData(parent=project, label=place.subject)
            log.info("XNAT %s: created %s", place.project, place.subject_in_logs)
        xsi_type = self.session_type(modality)
        cls = self.session.XNAT_CLASS_LOOKUP[xsi_type]
        created = cls(parent=subject, label=place.session, **{k: v for k, v in fields.items() if v})
        log.info("XNAT %s: created %s %s (%s)", place.project, xsi_type, place.session, place.subject_in_logs)
        return created

    def session_type(self, modality: str) -> str:
        """The session type XNAT uses for ``modality`` (``xnat:otherDicomSessionData`` if unknown here)."""
        wanted = _SESSION_TYPE_BY_MODALITY.get(modality, OTHER_SESSION_TYPE)
        return wanted if self.has_type(wanted) else OTHER_SESSION_TYPE

    def import_series(self, place: StudyPlace, session: Any, series: Sequence[SourceSeries]) -> list[str]:
        """Send each series not yet in ``session`` through the import service; their UIDs."""
        present = self._scan_uids(session)
        missing = [s for s in series if s.series_instance_uid not in present]
        for s in missing:
            with tempfile.TemporaryDirectory(prefix="radloop-xnat-") as tmp:
                archive = Path(tmp) / "series.zip"
                _zip(s.paths, archive)
                with archive.open("rb") as data:  # a stream: xnatpy draws no progress bar for it
                    self.session.services.import_(
                        data=data,
                        project=place.project,
                        subject=place.subject,
                        experiment=place.session,
                        destination="/archive",
                        overwrite="append",
                        content_type="application/zip",
                    )
            log.info(
                "XNAT %s/%s: imported series %s (%d files)",
                place.project,
                place.session,
                s.series_instance_uid,
                len(s.paths),
            )
        return [s.series_instance_uid for s in missing]

    def _scan_uids(self, session: Any) -> set[str]:
        rows = self.session.get_json(
            f"/data/experiments/{session.id}/scans", query={"columns": "ID,UID,type,xsiType"}
        )
        return {str(r.get("UID", "")) for r in rows["ResultSet"]["Result"]}

    # ------------------------------------------------------------------ results

    def store_result(self, place: StudyPlace, session: Any, result: ResultFile) -> StoreReport:
        """Store one result file in session resource ``<kind>``, plus an ROI collection assessor where
        the server has that type; see the module docstring."""
        report = StoreReport([], [], [])
        self.upload_file(session, resource_label(result.kind), result.path, result.name, report)
        if result.kind in ROI_COLLECTION_TYPES and self.has_type(ROI_COLLECTION_TYPE):
            self.ensure_roi_collection(place, session, result, report)
        return report

    def upload_file(self, owner: Any, label: str, path: Path, name: str, report: StoreReport) -> None:
        """Put ``path`` as file ``name`` in resource ``label`` of ``owner`` unless the bytes are there."""
        resources = owner.resources
        resources.clearcache()
        resource = resources.get(label)
        if resource is None:
            resource = owner.create_resource(label, format="DICOM")
            report.created.append(f"resource {label}")
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        current = self._file_digests(resource)
        if current.get(name) == digest:
            report.skipped.append(f"{label}/{name}")
            return
        resource.upload(
            path, name, overwrite=True, verbose=False, file_format="DICOM", file_content="radloop"
        )
        report.uploaded.append(f"{label}/{name}")

    def _file_digests(self, resource: Any) -> dict[str, str]:
        rows = self.session.get_json(f"{resource.uri}/files")["ResultSet"]["Result"]
        return {str(r.get("Name", "")): str(r.get("digest", "")) for r in rows}

    def ensure_roi_collection(
        self, place: StudyPlace, session: Any, result: ResultFile, report: StoreReport
    ) -> None:
        """An ``icr:roiCollectionData`` assessor holding ``result``, created through the ROI plugin's API."""
        label = roi_collection_label(result.kind, result.sop_instance_uid)
        assessors = session.assessors
        assessors.clearcache()
        if label in assessors:
            report.skipped.append(f"assessor {label}")
            return
        self.session.upload_file(
            f"/xapi/roi/projects/{place.project}/sessions/{session.id}/collections/{label}",
            result.path,
            query={"type": result.kind, "overwrite": "false", "seriesuid": result.series_instance_uid},
            content_type="application/octet-stream",
            method="put",
            verbose=False,
        )
        report.created.append(f"assessor {label}")


def roi_collection_label(kind: str, sop_instance_uid: str) -> str:
    """A project-unique assessor label for one result: ``radloop_<kind>_<hash of its SOP Instance UID>``."""
    return xnat_label(f"radloop_{kind}_{hashlib.sha1(sop_instance_uid.encode()).hexdigest()[:16]}")


def _zip(paths: Sequence[Path], target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for p in paths:
            archive.write(p, f"series/{p.name}")


def _short(error: BaseException) -> str:
    """An exception as one line (xnatpy puts whole response bodies into its messages)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
