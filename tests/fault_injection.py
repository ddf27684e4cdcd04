"""Faults for the fault-injection matrix (`tests/integration/test_fault_matrix.py`).

A plain module like `peers`: a private PostgreSQL cluster the test may restart (never the
machine's shared one), a small tmpfs to fill up, a paused peer (SIGSTOP), TCP connections seen
with `ss`, and the checks every fault ends with: what was acknowledged is stored and indexed, every
job ran once, every result is in the PACS once, no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlmodel import Session, select

import peers
from radloop.core.models import Delivery, DeliveryState, Instance, Job, JobState, Result
from radloop_proc import RadloopServer

TEMP_PATTERNS = ("*.tmp", ".*.tmp", "*.part", "*.partial", ".tmp-*")
"""What a half-done write looks like under ``data_dir`` (the store's, the runner's, the export's)."""


# --------------------------------------------------------------------------- a private PostgreSQL


class PrivatePostgres:
    """A PostgreSQL cluster of its own in ``workdir`` on a free port on 127.0.0.1 (trust auth).

    Run as the ``postgres`` user (initdb refuses root), in a folder of its own under the system
    temp dir (pytest's are root-only), removed by ``stop()``. ``restart()`` is a real server
    restart: every connection is cut, the data stays.
    """

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            pytest.fail("PostgreSQL server binaries missing: `apt-get install postgresql`", pytrace=False)
        self.bin = Path(bins[-1]).parent
        self.workdir = Path(tempfile.mkdtemp(prefix="radloop-fault-pg-"))
        self.data = self.workdir / "pgdata"
        self.port = peers.free_port()
        self.log_path = self.workdir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/radloop"

    def _as_postgres(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def _pg_ctl(self, *args: str) -> None:
        done = self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "30", *args
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stderr}\n{self.log_text()}")

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        done = self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.workdir} -c fsync=off"
        self._pg_ctl("start", "-o", options)
        created = self._as_postgres(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "radloop"
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr}")
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: sessions are terminated, the server comes back on the same port."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        """Stop the server (immediate) and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- a small disk


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MB mounted at ``mountpoint`` (made here), unmounted at the end."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mountpoint} (root needed): {done.stderr}", pytrace=False)
    try:
        yield mountpoint
    finally:
        umount = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30, check=False)
        if umount.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Write a filler file in ``folder`` until at most ``leave_bytes`` stay free; return its path."""
    filler = folder / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "ab") as f:
        for _ in range(1 << 16):  # bounded: 64 GiB at most
            free = shutil.disk_usage(folder).free
            if free <= leave_bytes:
                break
            try:
                f.write(chunk[: min(len(chunk), free - leave_bytes)])
                f.flush()
            except OSError:
                break
    return filler


# --------------------------------------------------------------------------- peers paused, connections


def orthanc_pid(orthanc: peers.OrthancServer) -> int:
    """The process id of a running Orthanc started by `peers.OrthancServer`."""
    proc = orthanc._proc  # noqa: SLF001 - the test's own child process
    assert proc is not None and proc.poll() is None, "Orthanc is not running"
    return proc.pid


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the block (a peer that hangs), SIGCONT afterwards whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def established_to(port: int) -> int:
    """How many established TCP connections go to 127.0.0.1:``port`` right now (``ss``)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", "dst", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


# --------------------------------------------------------------------------- what must hold afterwards


def leftover_temp_files(data_dir: Path) -> list[str]:
    """Temporary or zero-byte files under ``data_dir``: half-done writes nobody cleaned up."""
    found = {p for pattern in TEMP_PATTERNS for p in data_dir.rglob(pattern) if p.is_file()}
    found |= {p for p in data_dir.rglob("*.dcm") if p.is_file() and p.stat().st_size == 0}
    return sorted(str(p.relative_to(data_dir)) for p in found)


def jobs(server: RadloopServer) -> list[Job]:
    with Session(server.engine) as s:
        return list(s.exec(select(Job)).all())


def results(server: RadloopServer) -> list[Result]:
    with Session(server.engine) as s:
        return list(s.exec(select(Result)).all())


def deliveries(server: RadloopServer) -> list[Delivery]:
    with Session(server.engine) as s:
        return list(s.exec(select(Delivery)).all())


def settled(server: RadloopServer) -> bool:
    """No job queued or running and no delivery pending: recovery is over."""
    open_jobs = [j for j in jobs(server) if j.state in (JobState.queued, JobState.running)]
    pending = [d for d in deliveries(server) if d.state == DeliveryState.pending]
    return bool(jobs(server)) and not open_jobs and not pending


def sop_uids_in(orthanc: peers.OrthancServer) -> list[str]:
    """SOPInstanceUID of every instance Orthanc holds (a list: a duplicate would show)."""
    return [str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances()]


def assert_acknowledged_stored(server: RadloopServer, acknowledged: list[str]) -> None:
    """Every acknowledged SOP Instance UID is indexed once, and its file holds that instance."""
    with Session(server.engine) as s:
        rows = s.exec(select(Instance)).all()
    indexed = {r.sop_instance_uid: r for r in rows}
    assert len(indexed) == len(rows), "an instance is indexed twice"
    for uid in acknowledged:
        assert uid in indexed, f"{uid} was acknowledged but is not indexed"
        path = server.settings.data_dir / indexed[uid].path
        assert path.is_file(), f"{uid} is indexed but {path} is missing"
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == uid


def assert_recovered(
    server: RadloopServer,
    orthanc: peers.OrthancServer,
    *,
    acknowledged: list[str],
    expected_jobs: int,
) -> None:
    """The matrix's four promises once recovery has settled (see docs/fault-matrix.md)."""
    assert_acknowledged_stored(server, acknowledged)
    all_jobs = jobs(server)
    assert len(all_jobs) == expected_jobs, [(j.id, j.idempotency_key, j.state) for j in all_jobs]
    assert len({j.idempotency_key for j in all_jobs}) == len(all_jobs), "a job was queued twice"
    assert all(j.state == JobState.succeeded for j in all_jobs), [(j.id, j.state, j.error) for j in all_jobs]
    rows = results(server)
    assert rows, "no result recorded"
    assert all(d.state == DeliveryState.sent for d in deliveries(server))
    held = sop_uids_in(orthanc)
    assert len(held) == len(set(held)), "Orthanc holds a result twice"
    assert sorted(held) == sorted(r.sop_instance_uid for r in rows), "results and PACS differ"
    assert leftover_temp_files(server.settings.data_dir) == []
