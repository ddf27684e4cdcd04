"""``radloop xnat watch PROJECT``: run pipelines on the new sessions of an XNAT project.

Each poll lists the project's sessions with their ``insert_date`` and handles, oldest first, the
ones past the stored *cursor*: it downloads the scans' ``DICOM`` resources, runs every configured
pipeline on the series its match rules accept (as ``radloop run-pipeline`` does), and stores the
results back on the session (session resources ``SEG``, ``RTSTRUCT``, … and an ROI collection
where the server has that type). A session is handled once: its outcome is written to the state
file before the next one starts, so a watcher killed and restarted goes on where it stopped.

State (``<data_dir>/xnat/watch-<PROJECT>.json``, replaced atomically after every session):

* ``cursor``: an ``insert_date`` such that every session inserted at or before it is finished;
  sessions older than the cursor are never looked at again;
* ``sessions``: outcome per session ID since the cursor: ``done``, ``retry`` (failed, tried again
  next poll) or ``failed`` (gave up after ``xnat.watch.max_attempts``), attempts, last error.

Only one watcher per project runs at a time (an exclusive lock on ``<state file>.lock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from radloop.core.errors import ConfigError
from radloop.core.settings import Settings, XnatDestination
from radloop.core.ticking import run_every
from radloop.inference.resolve import ModelResolver
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.spec import Pipeline
from radloop.xnat_plugin.client import ResultFile, XnatArchive, connect
from radloop.xnat_plugin.labels import StudyPlace, result_kind
from radloop.xnat_plugin.run_pipeline import MountedSeries, find_series, run_on_series, select_series

log = logging.getLogger(__name__)
DONE, RETRY, FAILED = "done", "retry", "failed"


@dataclass
class WatchState:
    """The watcher's memory across polls and restarts (see the module docstring)."""

    project: str
    cursor: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, project: str) -> WatchState:
        """The saved state, or a fresh one if there is none; ConfigError if the file is unreadable."""
        if not path.exists():
            return cls(project)
        try:
            data = json.loads(path.read_text())
            return cls(project, str(data.get("cursor", "")), dict(data.get("sessions", {})))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the XNAT watch state {path}: {e}") from e

    def save(self, path: Path) -> None:
        """Write the state atomically: temp file, fsync, rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as f:
            data = {"project": self.project, "cursor": self.cursor, "sessions": self.sessions}
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def pending(self, row: dict[str, str]) -> bool:
        """Whether a listed session still needs handling."""
        if self.cursor and row["insert_date"] < self.cursor:
            return False
        return self.sessions.get(row["ID"], {}).get("state") not in (DONE, FAILED)

    def advance(self, rows: list[dict[str, str]]) -> None:
        """Move the cursor past every finished session that no unfinished one precedes; prune."""
        for row in sorted(rows, key=_order):
            if row["insert_date"] < self.cursor:
                continue
            if self.sessions.get(row["ID"], {}).get("state") not in (DONE, FAILED):
                break
            self.cursor = row["insert_date"]
        self.sessions = {k: v for k, v in self.sessions.items() if v.get("insert_date", "") >= self.cursor}


@dataclass
class PollReport:
    """What one poll did: sessions handled (ID → outcome) and result files stored."""

    handled: dict[str, str] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)


class ProjectWatcher:
    """Watches one XNAT project; :meth:`poll_once` for one pass, :meth:`run` to keep polling."""

    def __init__(
        self, settings: Settings, project: str, catalog: PipelineCatalog, pipelines: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.project = project
        self.config = self._server(settings)
        names = pipelines or settings.xnat.watch.pipelines
        if not names:
            raise ConfigError("no pipelines to run: set xnat.watch.pipelines or pass --pipeline")
        self.pipelines: list[Pipeline] = [catalog.get(n) for n in names]
        self.state_path = settings.data_dir / "xnat" / f"watch-{project}.json"
        self.models = ModelResolver.from_settings(settings)  # backends outlive sessions: a model loads once

    @staticmethod
    def _server(settings: Settings) -> XnatDestination:
        name = settings.xnat.watch.destination
        if not name:
            raise ConfigError("xnat.watch.destination must name an xnat destination (its server and login)")
        config = settings.destination(name)
        if not isinstance(config, XnatDestination):
            raise ConfigError(f"xnat.watch.destination {name!r} is a {config.kind} destination, not xnat")
        return config

    def poll_once(self) -> PollReport:
        """List the project's sessions and handle each new one, saving the state after each."""
        report = PollReport()
        with self._locked():
            state = WatchState.load(self.state_path, self.project)
            with connect(self.config) as archive:
                rows = [r for r in archive.sessions(self.project) if _is_image_session(r)]
                for row in sorted(filter(state.pending, rows), key=_order):
                    outcome = self._handle(archive, state, row, report)
                    report.handled[row["ID"]] = outcome
                    state.save(self.state_path)
                state.advance(rows)
                state.save(self.state_path)
        return report

    def run(self, stop: threading.Event) -> None:
        """Poll every ``xnat.watch.interval_s`` until ``stop`` is set; a failed poll is logged and retried."""
        run_every(f"XNAT {self.project} poll", self._poll_and_log, self.settings.xnat.watch.interval_s, stop)

    def _poll_and_log(self) -> None:
        report = self.poll_once()
        if report.handled:
            log.info("XNAT %s: handled %s", self.project, report.handled)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_path.with_suffix(".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise ConfigError(f"another watcher of XNAT project {self.project} is running") from e
            yield

    def _handle(
        self, archive: XnatArchive, state: WatchState, row: dict[str, str], report: PollReport
    ) -> str:
        entry = state.sessions.setdefault(row["ID"], {"insert_date": row["insert_date"], "attempts": 0})
        entry["attempts"] += 1
        try:
            stored = self._run_session(archive, row)
        except Exception as e:  # session boundary: any error is recorded in the state and retried
            log.exception("XNAT %s: session %s (%s) failed", self.project, row["label"], row["ID"])
            given_up = entry["attempts"] >= self.settings.xnat.watch.max_attempts
            entry.update(state=FAILED if given_up else RETRY, error=f"{type(e).__name__}: {e}"[:2000])
            return str(entry["state"])
        entry.update(state=DONE, error="", results=stored)
        report.results.extend(stored)
        return DONE

    def _run_session(self, archive: XnatArchive, row: dict[str, str]) -> list[str]:
        session = archive.experiment(row["ID"])
        place = StudyPlace(self.project, row.get("subject_label", ""), row["label"])
        workroot = self.settings.data_dir / "xnat" / "work"
        workroot.mkdir(parents=True, exist_ok=True)
        stored: list[str] = []
        with tempfile.TemporaryDirectory(prefix=f"{row['ID']}-", dir=workroot) as tmp:
            found = self._download_scans(session, Path(tmp) / "input")
            for pipeline in self.pipelines:
                chosen, skipped = select_series(pipeline, found)
                for line in skipped:
                    log.info("XNAT %s/%s: %s not run on %s", self.project, row["label"], pipeline.name, line)
                for i, mounted in enumerate(chosen):
                    stored += self._run_and_store(
                        archive, place, session, pipeline, mounted, Path(tmp) / f"{pipeline.name}-{i}"
                    )
        return stored

    def _run_and_store(
        self,
        archive: XnatArchive,
        place: StudyPlace,
        session: Any,
        pipeline: Pipeline,
        mounted: MountedSeries,
        workdir: Path,
    ) -> list[str]:
        stored = []
        for obj in run_on_series(pipeline, mounted, workdir, self.models):
            for path in obj.paths:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                result = ResultFile(path, result_kind(ds), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
                archive.store_result(place, session, result)
                stored.append(f"{result.kind}/{result.name}")
        log.info("XNAT %s/%s: %s stored %s", self.project, place.session, pipeline.name, stored)
        return stored

    def _download_scans(self, session: Any, root: Path) -> list[MountedSeries]:
        """Each scan's DICOM resource, unpacked as ``root/SCANS/<scan id>/…`` (the session-mount layout)."""
        label = self.settings.xnat.watch.scan_resource
        scans = session.scans
        scans.clearcache()
        for scan in scans.values():
            resources = scan.resources
            resources.clearcache()
            resource = resources.get(label)
            if resource is None:
                continue
            target = root / "SCANS" / str(scan.id)
            target.mkdir(parents=True)
            archive_path = target.with_suffix(".zip")
            resource.download(str(archive_path), verbose=False)
            _unpack(archive_path, target)
        return find_series(root) if root.exists() else []


def _unpack(archive_path: Path, target: Path) -> None:
    """Extract the files of a resource zip flat into ``target`` (XNAT nests them under several folders)."""
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = Path(info.filename).name
            with archive.open(info) as src, (target / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
    archive_path.unlink()


def _is_image_session(row: dict[str, str]) -> bool:
    return row.get("xsiType", "").endswith("SessionData")


def _order(row: dict[str, str]) -> tuple[str, str]:
    return (row.get("insert_date", ""), row.get("ID", ""))
