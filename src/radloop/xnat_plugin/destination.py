"""The ``xnat`` destination: the outbox sends each result file here, one at a time.

For one result file (a SEG, RTSTRUCT, SR or SC of a study), :meth:`XnatSender.send`

1. maps the study to project / subject / session (:class:`~radloop.xnat_plugin.labels.LabelMapper`),
2. finds or creates the subject and the session (typed by the source series' modality),
3. with ``import_source``, sends the source series that the result references through XNAT's
   import service, unless the session already has scans with their SeriesInstanceUIDs,
4. stores the file as ``<SOPInstanceUID>.dcm`` in the session resource named after its kind
   (``SEG``, ``RTSTRUCT``, ``SR``, ``SC``), and for SEG and RTSTRUCT adds an ROI collection
   assessor where the server has that type (the ICR ROI-collection plugin). Without that plugin
   the session resource is the documented fallback: no assessor type of XNAT's core schema
   (``xnat:qcAssessmentData`` …) describes a segmentation.

Every step finds what is already there first, so a second delivery of the same result changes
nothing (and a changed file with the same SOP Instance UID replaces the old one).

Where the source series are: a result the runner stored lives at
``<data_dir>/results/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and the store
keeps its sources at ``<data_dir>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/`` (see the
README's "Storage"); a result elsewhere has no local sources, and is delivered without them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from radloop.core.errors import DeliveryError
from radloop.core.settings import XnatDestination
from radloop.xnat_plugin.client import ResultFile, SourceSeries, StoreReport, connect
from radloop.xnat_plugin.labels import LabelMapper, result_kind

log = logging.getLogger(__name__)


class XnatSender:
    """Delivers result files to an XNAT project (see the module docstring)."""

    def __init__(self, config: XnatDestination) -> None:
        self.config = config
        self.mapper = LabelMapper(config)

    def send(self, path: Path) -> None:
        """Deliver one result file; DeliveryError (retried by the outbox) when anything fails."""
        self.deliver(path)

    def deliver(self, path: Path) -> StoreReport:
        """:meth:`send`, returning what changed on the server."""
        ds = _read_header(path)
        place = self.mapper.place(ds)
        result = ResultFile(path, result_kind(ds), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
        sources = local_source_series(path, ds)
        with connect(self.config) as archive:
            modality = sources[0].modality if sources else ""
            session = archive.ensure_session(place, modality, _session_fields(ds))
            if self.config.import_source:
                if sources:
                    archive.import_series(place, session, sources)
                else:
                    log.warning(
                        "%s: no local source series for %s; delivering it without them",
                        self.config.name,
                        path.name,
                    )
            report = archive.store_result(place, session, result)
        outcome = f"uploaded {report.uploaded}, created {report.created}" if report.changed else "no change"
        log.info(
            "%s: %s %s → %s/%s/%s: %s",
            self.config.name,
            result.kind,
            result.sop_instance_uid,
            place.project,
            place.subject_in_logs,
            place.session,
            outcome,
        )
        return report


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise DeliveryError(f"cannot read result file {path}: {e}") from e


def _session_fields(ds: Dataset) -> dict[str, str]:
    """Session fields set on creation: the study's UID and date (no patient data)."""
    date = str(ds.get("StudyDate", "") or "")
    return {
        "UID": str(ds.get("StudyInstanceUID", "")),
        "date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "",
    }


def referenced_series(ds: Dataset) -> list[str]:
    """SeriesInstanceUIDs a result references (its sources), in order of first mention."""
    found: dict[str, None] = {}

    def walk(items: Dataset) -> None:
        for element in items:
            if element.VR == "SQ":
                for child in element.value:
                    uid = str(child.get("SeriesInstanceUID", "") or "")
                    if uid:
                        found.setdefault(uid, None)
                    walk(child)

    walk(ds)
    found.pop(str(ds.get("SeriesInstanceUID", "")), None)
    return list(found)


def local_source_series(result_path: Path, ds: Dataset) -> list[SourceSeries]:
    """The referenced series the local store holds, when ``result_path`` is in the results folder."""
    parents = result_path.resolve().parents
    if len(parents) < 4 or parents[2].name != "results":
        return []
    study_dir = parents[3] / "instances" / str(ds.StudyInstanceUID)
    out = []
    for uid in referenced_series(ds):
        paths = tuple(sorted((study_dir / uid).glob("*.dcm")))
        if paths:
            modality = str(pydicom.dcmread(paths[0], stop_before_pixels=True).get("Modality", ""))
            out.append(SourceSeries(uid, modality, paths))
    return out
