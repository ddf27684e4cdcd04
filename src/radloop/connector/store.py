"""The instance store: every received instance is durably on disk, then indexed.

Layout: ``<data_dir>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Order of operations (this is what lets the SCP acknowledge safely):

1. validate the identifying UIDs (an object without them cannot be stored or routed);
2. write the bytes to a temporary file in the target folder, ``fsync`` it, ``rename`` it into
   place and ``fsync`` the folder, so the file survives a crash or power loss;
3. index it (study, series, instance rows) in one transaction.

Only after step 3 does the caller answer Success. That is ``dicom.durability: fsync`` (the
default). With ``durability: commit`` step 2 writes and renames without waiting for the disk:
a :class:`GroupSync` thread fsyncs the written files and their folders every ``group_fsync_ms``,
and :meth:`InstanceStore.sync_barrier` waits until everything written so far is fsynced (what a
Storage Commitment result waits for). A ``kill -9`` of the process loses nothing either way (the
kernel holds the written bytes); a power cut may lose what was written after the last group fsync
in ``commit`` mode (a file may then be truncated under an index row that survived; a resend
replaces it, and a sender that waits for Storage Commitment resends).

A duplicate SOP Instance UID is idempotent:
the file is rewritten in place and the index row kept. The same SOP Instance UID in *another*
study or series is refused (:class:`SopInstanceConflictError`): the index can point at one file
only, and acknowledging an instance no query reaches would be a lie. A *new* instance arriving
for a series that is already complete re-opens the series (it is never dropped); a resent
duplicate does not.

A crash can leave two kinds of leftovers, which :meth:`InstanceStore.reconcile` clears at start-up:
temporary files of writes that never finished, and instance files renamed into place whose index
transaction never committed (never acknowledged).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col, select

from radloop.connector.instance_index import IndexedElsewhereError, InstanceIndex, InstanceRow, header_plain
from radloop.connector.sanity import InstanceLimits, check_part10
from radloop.core.errors import DiskFullError, InvalidInstanceError, StoreError
from radloop.core.models import Instance, Series, Study
from radloop.core.refs import is_valid_uid

log = logging.getLogger(__name__)
Buffer = bytes | memoryview


@dataclass(frozen=True)
class ReceivedInstance:
    """What the connector knows about one received object, besides its bytes."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    called_ae: str = ""
    calling_ae: str = ""


class SopInstanceConflictError(InvalidInstanceError):
    """The SOP Instance UID is already indexed in another study or series."""

    rule = "SOPInstanceUID-conflict"


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`InstanceStore.reconcile` found and did."""

    temp_files_removed: int = 0
    instances_indexed: int = 0
    instances_removed: int = 0
    kept_recent: int = 0


@dataclass(frozen=True)
class StoredInstance:
    """The outcome of :meth:`InstanceStore.store`."""

    series_id: int
    path: Path
    duplicate: bool
    reopened: bool


def describe(
    ds: Dataset, transfer_syntax_uid: str, called_ae: str = "", calling_ae: str = ""
) -> ReceivedInstance:
    """Pull the identifying UIDs out of a data set, refusing objects that lack valid ones."""

    def uid(keyword: str) -> str:
        value = str(header_plain(ds, keyword) or "").strip()
        if not is_valid_uid(value):
            shown = repr(value) if value else "empty"
            raise InvalidInstanceError(
                f"{keyword} is {shown}: not a valid UID, the instance cannot be stored"
            )
        return value

    return ReceivedInstance(
        study_instance_uid=uid("StudyInstanceUID"),
        series_instance_uid=uid("SeriesInstanceUID"),
        sop_instance_uid=uid("SOPInstanceUID"),
        sop_class_uid=uid("SOPClassUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        called_ae=called_ae,
        calling_ae=calling_ae,
    )


class InstanceStore:
    """Atomic, durable instance files plus their index rows."""

    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        min_free_bytes: int = 0,
        limits: InstanceLimits | None = None,
        *,
        durability: Literal["fsync", "commit"] = "fsync",
        group_fsync_ms: float = 5.0,
    ) -> None:
        self.root = data_dir / "instances"
        self.durability = durability
        self._group = GroupSync(group_fsync_ms / 1000.0) if durability == "commit" else None
        self.limits = limits or InstanceLimits()  # what every instance is checked against before storing
        self.data_dir = data_dir
        self.engine = engine
        self.min_free_bytes = min_free_bytes
        self._index = InstanceIndex(engine)  # the rows, on the driver's cursor (connector/instance_index)
        self.root.mkdir(parents=True, exist_ok=True)

    def has_space(self) -> bool:
        """True while free space on the data volume is above the configured floor."""
        return self.min_free_bytes <= 0 or shutil.disk_usage(self.root).free >= self.min_free_bytes

    def path_for(self, info: ReceivedInstance) -> Path:
        return self.root / info.study_instance_uid / info.series_instance_uid / f"{info.sop_instance_uid}.dcm"

    def store(
        self, encoded: Buffer | Sequence[Buffer], info: ReceivedInstance, ds: Dataset
    ) -> StoredInstance:
        """Write ``encoded`` (a complete DICOM file: preamble, meta, data set; or its parts in order,
        written with one ``writev``) durably, then index it."""
        parts: Sequence[Buffer] = [encoded] if isinstance(encoded, bytes | memoryview) else encoded
        size = sum(len(p) for p in parts)
        if not self.has_space():
            raise DiskFullError(
                f"free space on {self.root} is below the floor of {self.min_free_bytes} bytes; "
                "refusing new data"
            )
        path = self.path_for(info)
        if self._group is None:
            _write_durably(path, parts)
        else:
            self._group.add(path, _write_unsynced(path, parts))
        try:
            return self._index_file(info, ds, path, size)
        except SopInstanceConflictError:
            path.unlink(missing_ok=True)  # never indexed, never acknowledged: the other file stays
            raise

    def sync_barrier(self, timeout_s: float) -> bool:
        """Wait until every file stored so far is fsynced; False if that took over ``timeout_s``.

        Immediate in ``fsync`` mode (each store fsyncs before it returns)."""
        return self._group is None or self._group.barrier(timeout_s)

    def make_durable(self, relative_paths: Sequence[str]) -> bool:
        """Fsync these indexed files (paths relative to ``data_dir``) and their folders now, whichever
        process wrote them; False (logged) if one cannot be. A no-op in ``fsync`` mode."""
        if self._group is None:
            return True
        files = [self.data_dir / p for p in relative_paths]
        folders = {f.parent for f in files} | {f.parent.parent for f in files}
        return not GroupSync._sync(files, folders)

    def close(self) -> None:
        """Fsync what is still pending (``commit`` mode) and stop the group-fsync thread."""
        if self._group is not None:
            self._group.stop()

    def _index_file(self, info: ReceivedInstance, ds: Dataset, path: Path, size: int) -> StoredInstance:
        """Index rows for one stored file, in one transaction (:class:`InstanceIndex`)."""
        row = InstanceRow(
            study_instance_uid=info.study_instance_uid,
            series_instance_uid=info.series_instance_uid,
            sop_instance_uid=info.sop_instance_uid,
            sop_class_uid=info.sop_class_uid,
            transfer_syntax_uid=info.transfer_syntax_uid,
            called_ae=info.called_ae,
            calling_ae=info.calling_ae,
            path=str(path.relative_to(self.data_dir)),
            size_bytes=size,
        )
        try:
            done = self._index.add(row, ds)
        except IndexedElsewhereError as e:
            with self.engine.connect() as conn:
                raise _conflict(conn, info, e.existing_path) from None
        return StoredInstance(done.series_id, path, duplicate=done.duplicate, reopened=done.reopened)

    def reconcile(self, min_age_s: float = 60.0, limits: InstanceLimits | None = None) -> ReconcileReport:
        """Clear what a crash left in the instance tree; call once at start-up, before receiving.

        * Temporary files (``.<name>.<hex>.tmp``) are writes that never reached their rename
          (a crash, ENOSPC): nothing refers to them, and they are removed.
        * An instance file with no index row was renamed into place but its index transaction
          never committed, so it was never acknowledged: removing it would be allowed. It is
          *indexed* instead when it is a complete, valid instance whose UIDs match its path
          (it was fsynced before the rename, so it is whole; indexing spares the sender a
          resend and the resend is idempotent anyway); otherwise it is removed.

        Files younger than ``min_age_s`` are left alone: with several processes or hosts sharing
        ``data_dir``, another one may be writing or indexing them right now.
        """
        limits = limits or self.limits
        cutoff = time.time() - min_age_s
        temp_removed = indexed = removed = recent = 0
        for series_dir in (d for study in _dirs(self.root) for d in _dirs(study)):
            known = self._indexed_names(series_dir)
            for path in series_dir.iterdir():
                is_temp = path.name.endswith(".tmp")
                if not path.is_file() or not (is_temp or path.suffix == ".dcm") or path.name in known:
                    continue
                if path.stat().st_mtime > cutoff:
                    recent += 1
                elif is_temp:
                    path.unlink(missing_ok=True)
                    temp_removed += 1
                elif self._index_leftover(path, limits):
                    indexed += 1
                else:
                    path.unlink(missing_ok=True)
                    removed += 1
        report = ReconcileReport(temp_removed, indexed, removed, recent)
        log.info(
            "instance store reconciled: %d temp file(s) removed, %d un-indexed instance(s) indexed, "
            "%d removed, %d recent file(s) left alone",
            temp_removed,
            indexed,
            removed,
            recent,
        )
        return report

    def _indexed_names(self, series_dir: Path) -> set[str]:
        """File names of the instances indexed under one series folder."""
        prefix = str(series_dir.relative_to(self.data_dir)) + os.sep
        with self.engine.connect() as conn:
            rows = conn.execute(select(Instance.path).where(col(Instance.path).startswith(prefix)))
            return {Path(str(row[0])).name for row in rows}

    def _index_leftover(self, path: Path, limits: InstanceLimits) -> bool:
        """Index an un-indexed instance file if it is valid and where its UIDs say; else False."""
        try:
            ds = check_part10(path.read_bytes(), limits)
            info = describe(ds, str(ds.file_meta.TransferSyntaxUID))
            if self.path_for(info) != path:
                log.warning("reconcile: %s holds another instance's UIDs; removing it", path.name)
                return False
            self._index_file(info, ds, path, path.stat().st_size)
        except (InvalidInstanceError, OSError) as e:
            log.warning("reconcile: un-indexed %s is not a valid instance (%s); removing it", path.name, e)
            return False
        log.info("reconcile: indexed %s (written but never acknowledged before a crash)", path.name)
        return True


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _conflict(conn: Connection, info: ReceivedInstance, existing_path: str) -> SopInstanceConflictError:
    """The error for a SOP Instance UID indexed at ``existing_path`` arriving for another study/series."""
    row = conn.execute(
        select(Study.study_instance_uid, Series.series_instance_uid)
        .join(Series, col(Series.study_id) == col(Study.id))
        .join(Instance, col(Instance.series_id) == col(Series.id))
        .where(Instance.sop_instance_uid == info.sop_instance_uid)
    ).first()
    study, series = (str(row[0]), str(row[1])) if row is not None else ("?", existing_path)
    where = f"study {study}" if study != info.study_instance_uid else f"series {series}"
    return SopInstanceConflictError(
        f"SOP Instance {info.sop_instance_uid} is already stored in {where}; refused for study "
        f"{info.study_instance_uid} series {info.series_instance_uid}"
    )


def _write_all(fd: int, parts: Sequence[Buffer]) -> None:
    """One ``writev`` of every part (a short write goes on where it stopped)."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _write_durably(path: Path, data: Sequence[Buffer]) -> None:
    """temp file → fsync → rename → fsync(folder): the file is either absent or complete after a crash."""
    folder = path.parent
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        new_dirs = not folder.exists()
        if new_dirs:  # mkdir on an existing folder still locks its parent: only when needed
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(folder)
        if new_dirs:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave the half-written temp file
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def _write_unsynced(path: Path, data: Sequence[Buffer]) -> list[Path]:
    """temp file → rename, no fsync (``commit`` mode); returns the folders it created (to fsync too)."""
    folder = path.parent
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        new_dirs = [] if folder.exists() else [folder, folder.parent, folder.parent.parent]
        if new_dirs:
            folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return new_dirs
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


class GroupSync:
    """``commit`` mode's group fsync: files written (and renamed) without fsync are fsynced, with
    their folders, by one thread every ``interval_s``; :meth:`barrier` waits for that.

    A file that is gone by then (refused as a conflict and removed) is skipped; an fsync that
    fails (EIO) is logged and retried in the next group, and barriers wait meanwhile.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._cond = threading.Condition()
        self._files: list[Path] = []
        self._dirs: set[Path] = set()
        self._added = 0  # sequence number of the last file added
        self._synced = 0  # every file up to this sequence number is fsynced
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="radloop-group-fsync", daemon=True)
        self._thread.start()

    def add(self, path: Path, new_dirs: list[Path]) -> None:
        with self._cond:
            self._files.append(path)
            self._dirs.add(path.parent)
            self._dirs.update(new_dirs)
            self._added += 1

    def barrier(self, timeout_s: float) -> bool:
        """True once every file added before this call is fsynced; False after ``timeout_s``."""
        with self._cond:
            target = self._added
            return self._cond.wait_for(lambda: self._synced >= target, timeout=timeout_s)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stopping:
                    self._cond.wait(self.interval_s)
                files, dirs, upto = self._files, self._dirs, self._added
                self._files, self._dirs = [], set()
                stopping = self._stopping
            if files or dirs:
                failed = self._sync(files, dirs)
                with self._cond:
                    if failed:  # retried next round; barriers keep waiting
                        self._files[:0] = failed
                        self._dirs.update(p.parent for p in failed)
                    else:
                        self._synced = upto
                    self._cond.notify_all()
            elif upto > self._synced:
                with self._cond:
                    self._synced = upto
                    self._cond.notify_all()
            if stopping:
                return

    @staticmethod
    def _sync(files: list[Path], dirs: set[Path]) -> list[Path]:
        failed: list[Path] = []
        for path in files:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # removed since (a refused conflict): nothing to keep
            except OSError as e:
                log.error("group fsync: cannot open %s: %s", path, e)
                failed.append(path)
                continue
            try:
                os.fsync(fd)
            except OSError as e:
                log.error("group fsync of %s failed (retried): %s", path, e)
                failed.append(path)
            finally:
                os.close(fd)
        # deepest folders first: a new series folder before its study folder
        for folder in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            try:
                _fsync_dir(folder)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("group fsync of folder %s failed (retried): %s", folder, e)
                failed.extend(p for p in files if p.parent == folder)
        return failed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
