"""Run a pipeline on a folder of DICOM files, without a server: ``radloop run-pipeline NAME --input
DIR --output DIR``, the entrypoint of radloop's XNAT Container Service image.

The Container Service mounts what a command's wrapper asks for at ``/input``:

* a **session**: XNAT's archive folder of the session, scans under ``SCANS/<scan id>/<resource
  label>/`` (``SCANS/3/DICOM/…``), besides ``RESOURCES/`` and ``ASSESSORS/``, which are ignored;
* a **scan resource**: its files directly (``/input/*.dcm``).

:func:`find_series` reads every DICOM header under ``SCANS/`` (or, without it, under the whole
folder), groups the files by SeriesInstanceUID and remembers each series' scan id. The
pipeline's match rules pick the series to run on (optionally only the given scan ids); each run
writes its results as ``<output>/<KIND>/<SOPInstanceUID>.dcm`` (``SEG/``, ``RTSTRUCT/``, ``SR/``,
``SC/``), the folders that the command's output handlers upload as session resources.

Result UIDs are derived from ``<pipeline>:<SeriesInstanceUID>:0``, the idempotency key that a
radloop server gives the first job of that series, so the same series gives the same SOP
Instance UIDs here and there, and a re-run overwrites rather than duplicates.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from radloop.core.errors import InputDataError, RadloopError
from radloop.core.models import Series
from radloop.core.refs import SeriesRef, is_valid_uid
from radloop.inference.resolve import ModelResolver
from radloop.pipelines.ports import DicomObjects, SeriesInput
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.spec import Pipeline
from radloop.pipelines.steps import run_pipeline_offline
from radloop.xnat_plugin.labels import result_kind

log = logging.getLogger(__name__)
SCANS_DIR = "SCANS"


class NothingToRunError(RadloopError):
    """No series in the input folder is accepted by the pipeline (the message says why, per series)."""


@dataclass(frozen=True)
class MountedSeries:
    """One series found in a mounted folder: the scan it came from (None outside ``SCANS/``) and its files."""

    scan_id: str | None
    series: SeriesInput
    sop_class_uid: str

    def as_series_row(self) -> Series:
        """A transient ``Series`` row, so that routing's match rules judge it as they judge stored series."""
        return Series(
            study_id=0,
            series_instance_uid=self.series.ref.SeriesInstanceUID,
            modality=self.series.modality,
            series_description=self.series.series_description,
            sop_class_uid=self.sop_class_uid,
            instance_count=len(self.series.paths),
        )

    def describe(self) -> str:
        where = f"scan {self.scan_id}" if self.scan_id else "series"
        s = self.series
        return f"{where} ({s.modality}, {len(s.paths)} files, {s.series_description!r})"


@dataclass(frozen=True)
class FolderRun:
    """What :func:`run_on_folder` did: the files written, and why the other series were not run."""

    outputs: list[Path]
    ran: list[MountedSeries]
    skipped: list[str]


def find_series(root: Path) -> list[MountedSeries]:
    """Every DICOM series under ``root`` (``SCANS/<id>/…`` when present), in scan order."""
    found = []
    for scan_id, files in _scan_groups(root):
        found.extend(_series_of(scan_id, files))
    return found


def _scan_groups(root: Path) -> list[tuple[str | None, list[tuple[Path, Dataset]]]]:
    """(scan id, DICOM files) per folder of ``root/SCANS``; ``(None, all files)`` without ``SCANS``."""
    scans = root / SCANS_DIR
    if not scans.is_dir():
        return [(None, _dicom_files(root))]
    return [(d.name, _dicom_files(d)) for d in sorted(scans.iterdir(), key=_scan_order) if d.is_dir()]


def _scan_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def _dicom_files(folder: Path) -> list[tuple[Path, Dataset]]:
    out: list[tuple[Path, Dataset]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue  # snapshots, NIfTI, catalogs: not ours to read
        if all(is_valid_uid(str(ds.get(k, ""))) for k in ("SeriesInstanceUID", "StudyInstanceUID")):
            out.append((path, ds))
    return out


def _series_of(scan_id: str | None, files: Iterable[tuple[Path, Dataset]]) -> list[MountedSeries]:
    by_uid: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in files:
        by_uid[str(ds.SeriesInstanceUID)].append((path, ds))
    out = []
    for uid, members in by_uid.items():
        members.sort(key=lambda m: (_instance_number(m[1]), m[0].name))
        first = members[0][1]
        series = SeriesInput(
            ref=SeriesRef(str(first.StudyInstanceUID), uid),
            modality=str(first.get("Modality", "")),
            paths=tuple(p for p, _ in members),
            series_description=str(first.get("SeriesDescription", "") or ""),
        )
        out.append(MountedSeries(scan_id, series, str(first.get("SOPClassUID", ""))))
    return out


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def select_series(
    pipeline: Pipeline, found: list[MountedSeries], scan_ids: Iterable[str] = ()
) -> tuple[list[MountedSeries], list[str]]:
    """The series the pipeline's match rules accept (among ``scan_ids`` if given), and why not the rest.

    The AE-title rules are left out: files mounted from XNAT did not arrive over DICOM. ``scan_ids``
    only applies to series found under ``SCANS/`` (a mounted scan resource is the scan asked for).
    """
    wanted = {s.strip() for s in scan_ids if s.strip()}
    # AE titles say how DICOM reached a radloop server; files from XNAT came by no association.
    rules = pipeline.spec.match.model_copy(update={"called_ae": [], "calling_ae": []})
    chosen, skipped = [], []
    for mounted in found:
        if wanted and mounted.scan_id is not None and mounted.scan_id not in wanted:
            skipped.append(f"{mounted.describe()}: not among the scans asked for ({sorted(wanted)})")
            continue
        why_not = rules.explain_mismatch(mounted.as_series_row())
        if why_not:
            skipped.append(f"{mounted.describe()}: {why_not}")
        else:
            chosen.append(mounted)
    return chosen, skipped


def run_on_series(
    pipeline: Pipeline, mounted: MountedSeries, workdir: Path, models: ModelResolver | None = None
) -> list[DicomObjects]:
    """Run ``pipeline`` on one series; its result files lie under ``workdir``. ``models`` resolves
    model names as a server's jobs do (settings, model store); None = the operators' own defaults."""
    key = f"{pipeline.name}:{mounted.series.ref.SeriesInstanceUID}:0"
    ctx = OperatorContext(
        job_id=0,
        idempotency_key=key,
        workdir=workdir,
        pipeline_name=pipeline.name,
        pipeline_version=pipeline.spec.version,
        models=models,
    )
    log.info("running %s %s on %s", pipeline.name, pipeline.spec.version, mounted.describe())
    return run_pipeline_offline(pipeline, mounted.series, ctx)


def write_outputs(objects: Iterable[DicomObjects], output_dir: Path) -> list[Path]:
    """Copy result files to ``<output_dir>/<KIND>/<SOPInstanceUID>.dcm`` (temp name, then rename)."""
    written = []
    for obj in objects:
        for path in obj.paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            target = output_dir / result_kind(ds) / f"{ds.SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)
            written.append(target)
    return written


def run_on_folder(
    pipeline: Pipeline,
    input_dir: Path,
    output_dir: Path,
    scan_ids: Iterable[str] = (),
    workdir: Path | None = None,
    models: ModelResolver | None = None,
) -> FolderRun:
    """Run ``pipeline`` on every accepted series under ``input_dir``; results into ``output_dir``.

    Raises :class:`NothingToRunError` (naming each series and the rule it breaks) when no series
    is accepted, and :class:`InputDataError` when ``input_dir`` holds no DICOM series at all.
    """
    found = find_series(input_dir)
    if not found:
        raise InputDataError(f"no DICOM series found under {input_dir}")
    chosen, skipped = select_series(pipeline, found, scan_ids)
    if not chosen:
        reasons = "; ".join(skipped)
        raise NothingToRunError(f"{pipeline.name} accepts none of the series in {input_dir}: {reasons}")
    outputs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="radloop-run-", dir=workdir) as tmp:
        for i, mounted in enumerate(chosen):
            objects = run_on_series(pipeline, mounted, Path(tmp) / f"series-{i}", models)
            outputs.extend(write_outputs(objects, output_dir))
    for line in skipped:
        log.info("not run on %s", line)
    return FolderRun(outputs, chosen, skipped)
