"""Load and soak: radloop under sustained ingest, API queries and pipeline work at once.

For ``--minutes`` (default 10): rounds of 8 parallel DCMTK ``storescu`` associations × 300 small CT
instances (fresh UIDs each round) into ``radloop serve``, while 20 API clients query QIDO-RS and the
REST API without pause and the brain pipeline runs on the real T1 (re-identified with fresh UIDs
every few minutes, so each send is a new study). Samples the server's process tree every 10 s and
prints: instances/s, API p50/p99 latency and errors, RSS and open file descriptors at minute 2 and
at the end (the goal: flat within ±10 %), jobs finished, errors in the server log.
Then ``--big`` (default 2000) instances of one series in one association: time to index and
complete it, and the server's RSS growth while it is assembled.

Run (project venv from scripts/test): .venv/bin/python bench/soak.py [--minutes 10] [--big 2000]
This is a benchmark, not a test; it talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402
from radloop_proc import RadloopServer  # noqa: E402

SOAK_AE, BRAIN_AE = "RADLOOP", "RADLOOP_BRAIN"
ASSOCIATIONS, PER_ASSOCIATION, API_CLIENTS = 8, 300, 20


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) summed over the process tree."""
    rss_kb, fds = 0, 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
        except OSError:
            continue
    return rss_kb / 1024, fds


def reidentify(src: Path, dst: Path) -> Path:
    """A copy of the series in ``src`` with a fresh study/series/instance UIDs (a new study to radloop)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / path.name, enforce_file_format=True)
    return dst


class ApiLoad:
    """``API_CLIENTS`` threads querying without pause; latencies in seconds, errors counted."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.headers = base, {"Authorization": f"Bearer {token}"}
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(API_CLIENTS)
        ]

    def _client(self, i: int) -> None:
        paths = [
            "/dicomweb/studies?limit=20",
            "/api/v1/jobs?limit=20",
            "/dicomweb/series?limit=5",
            "/api/v1/studies?limit=10",
        ]
        session = requests.Session()
        n = i
        while not self.stop.is_set():
            path = paths[n % len(paths)]
            n += 1
            started = time.perf_counter()
            try:
                r = session.get(self.base + path, headers=self.headers, timeout=30)
                ok = r.status_code in (200, 204)
                error = "" if ok else f"{path}: HTTP {r.status_code}"
            except requests.RequestException as e:
                error = f"{path}: {type(e).__name__}"
            with self._lock:
                self.latencies.append(time.perf_counter() - started)
                if error:
                    self.errors.append(error)

    def __enter__(self) -> ApiLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=35)


def send_round(folders: list[Path], port: int) -> int:
    """One round: every folder over its own association, in parallel; returns instances sent."""
    with ThreadPoolExecutor(len(folders)) as pool:
        procs = list(pool.map(lambda d: peers.storescu(d, "127.0.0.1", port, SOAK_AE, propose=None), folders))
    failed = [p.stderr[-300:] for p in procs if p.returncode != 0]
    if failed:
        print(f"  storescu failures: {failed[:2]}")
    return sum(PER_ASSOCIATION for p in procs if p.returncode == 0)


def soak(server: RadloopServer, work: Path, t1_dir: Path, minutes: float) -> None:
    token = server.create_token("soak")
    assert server.proc is not None
    pid = server.proc.pid
    deadline = time.monotonic() + minutes * 60
    started = time.monotonic()
    samples: list[tuple[float, float, int]] = []
    sampling = threading.Event()

    def sampler() -> None:  # every 10 s, independent of how long a round takes
        while not sampling.wait(10.0):
            rss, fds = sample(pid)
            samples.append((time.monotonic() - started, rss, fds))

    threading.Thread(target=sampler, daemon=True).start()
    sent, rounds, t1_sends, next_t1 = 0, 0, 0, 0.0
    with ApiLoad(server.api_url, token) as api:
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - started
            if elapsed >= next_t1:
                t1 = reidentify(t1_dir, work / "t1-send")
                peers.storescu(t1, "127.0.0.1", server.port, BRAIN_AE, propose=None)
                t1_sends += 1
                next_t1 = elapsed + 150
            folders = []
            for a in range(ASSOCIATIONS):
                folder = work / f"round-{a}"
                shutil.rmtree(folder, ignore_errors=True)
                peers.make_synthetic_ct_series(
                    folder, n=PER_ASSOCIATION, rows=64, cols=64, seed=rounds * 10 + a
                )
                folders.append(folder)
            sent += send_round(folders, server.port)
            rounds += 1
            last = samples[-1] if samples else (0.0, 0.0, 0)
            print(
                f"  {time.monotonic() - started:6.0f} s: round {rounds}, {sent} instances, "
                f"RSS {last[1]:.0f} MB, {last[2]} fds"
            )
        wall = time.monotonic() - started
    sampling.set()
    if not samples:
        samples.append((wall, *sample(pid)))
    lat = sorted(api.latencies)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
    at2 = next((s for s in samples if s[0] >= 120), samples[0])
    end = samples[-1]
    jobs = server.cli("jobs", "list", "--json")
    print(f"\nsoak: {wall / 60:.1f} min, {rounds} rounds, {sent} instances = {sent / wall:.1f} inst/s")
    print(
        f"API: {len(lat)} requests, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"{len(api.errors)} errors {sorted(set(api.errors))[:5]}"
    )
    print(
        f"RSS {at2[1]:.0f} MB at {at2[0]:.0f} s → {end[1]:.0f} MB at {end[0]:.0f} s "
        f"({(end[1] / at2[1] - 1) * 100:+.1f} %)"
    )
    print(f"fds {at2[2]} → {end[2]} ({(end[2] / max(at2[2], 1) - 1) * 100:+.1f} %)")
    print(
        f"brain studies sent: {t1_sends}; jobs: {jobs.stdout.count('succeeded')} succeeded, "
        f"{jobs.stdout.count('failed')} failed"
    )
    errors = [line for line in server.log_text().splitlines() if " ERROR " in line or "Traceback" in line]
    print(f"server log: {len(errors)} error line(s) {errors[:3]}")


def big_series(server: RadloopServer, work: Path, n: int) -> None:
    assert server.proc is not None
    folder = work / "big"
    shutil.rmtree(folder, ignore_errors=True)
    peers.make_synthetic_ct_series(folder, n=n, rows=128, cols=128, seed=99)
    rss0, _ = sample(server.proc.pid)
    peak = [rss0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sample(server.proc.pid)[0] if server.proc else 0)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    proc = peers.storescu(folder, "127.0.0.1", server.port, SOAK_AE, propose=None, timeout=900)
    sent = time.monotonic() - started
    series_uid = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID

    def completed() -> bool:
        out = server.cli("studies", "list", "--json").stdout
        return series_uid in out and '"complete' in out.split(series_uid, 1)[1][:2000]

    try:
        peers.wait_for(completed, timeout=300, interval=2, what="the big series to complete")
        done = time.monotonic() - started
    except TimeoutError:
        done = float("nan")
    stop.set()
    watcher.join()
    print(
        f"\n{n}-instance series: storescu rc {proc.returncode} in {sent:.0f} s, "
        f"completed after {done:.0f} s; "
        f"RSS {rss0:.0f} MB → peak {peak[0]:.0f} MB (+{peak[0] - rss0:.0f} MB; the series is "
        f"{n * 128 * 128 * 2 / 1e6:.0f} MB of pixels)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--big", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radloop-soak-"))
    t1_dir = work / "t1"
    peers.gunzip_series(peers.shared_data_dir() / "mr-brain-t1-philips" / "series", t1_dir)
    config = {
        "dicom": {
            "listeners": [
                {"ae_title": SOAK_AE, "pipelines": [], "complete_on_release": True},
                {"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "complete_on_release": True},
            ]
        },
        "workers": {"processes": 1},
    }
    (work / "radloop").mkdir()
    try:
        with RadloopServer(work / "radloop", config) as server:
            soak(server, work, t1_dir, args.minutes)
            if args.big:
                big_series(server, work, args.big)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
