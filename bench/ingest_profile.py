"""Where does each received instance's time go? cProfile over every thread of an in-process SCP.

Starts radloop's StorageSCP in this process (the same code `radloop serve` runs, without the
assembler, executor and API), profiles every thread it starts (one cProfile per thread, merged),
sends a synthetic CT series with DCMTK `storescu` (TCP_NODELAY) and prints the profiled time
per instance grouped by where it went: pynetdicom's PDU/DIMSE handling, pydicom parsing, the
file write, fsyncs, the index statements, logging, the rest. cProfile slows Python code more
than system calls, so the shares are indicative; the wall time without the profiler is printed
too.

    .venv/bin/python bench/ingest_profile.py [--n 100] [--size 512] [--durability fsync|commit]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from radloop.connector.dimse.scp import StorageSCP  # noqa: E402
from radloop.connector.store import InstanceStore  # noqa: E402
from radloop.core import db  # noqa: E402
from radloop.core.settings import load_settings  # noqa: E402

_PROFILES: list[cProfile.Profile] = []
_ORIGINAL_RUN = threading.Thread.run

# (group, predicate on (file, function name)); the first match wins
GROUPS: list[tuple[str, Any]] = [
    (
        "waiting (sleep, poll, queue, locks)",
        lambda f, n: _any(n, "sleep", "poll", "select", "wait", "acquire"),
    ),
    ("fsync", lambda f, n: "fsync" in n),
    (
        "file write/rename/open",
        lambda f, n: _any(n, "writev", "posix.write", "replace", "posix.open", "mkdir"),
    ),
    ("socket recv/send", lambda f, n: _any(n, "recv", "send")),
    ("index (SQLAlchemy + sqlite3)", lambda f, n: _any(f, "sqlalchemy", "sqlmodel") or "sqlite3" in n),
    ("logging", lambda f, n: "logging" in f),
    ("pynetdicom (PDU, DIMSE, events)", lambda f, n: "pynetdicom" in f),
    ("pydicom (header parse, encode)", lambda f, n: "pydicom" in f),
    ("radloop (checks, store, guard)", lambda f, n: "radloop" in f),
]


def _any(text: str, *parts: str) -> bool:
    return any(p in text for p in parts)


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile()
    _PROFILES.append(profile)
    profile.enable()
    try:
        _ORIGINAL_RUN(self)
    finally:
        profile.disable()


def receive(series: Path, n: int, work: Path, durability: str, profile: bool) -> tuple[float, Any]:
    # durability named only when not the default: this script also profiles older radloop trees
    # (PYTHONPATH=<other checkout>/src) for a before/after comparison
    mode: dict[str, Any] = {} if durability == "fsync" else {"durability": durability}
    settings = load_settings(
        data_dir=str(work / "data"), dicom={"host": peers.LOCALHOST, "port": 0, "min_free_bytes": 0, **mode}
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    store = InstanceStore(settings.data_dir, engine, **mode)
    scp = StorageSCP(settings, store, lambda _ids, _called: None)
    _PROFILES.clear()
    if profile:
        threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    try:
        port = scp.start()
        started = time.perf_counter()
        done = peers.storescu(series, peers.LOCALHOST, port, "RADLOOP", calling_ae="BENCHSCU", propose=None)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"storescu failed: {done.stderr[-2000:]}")
    finally:
        threading.Thread.run = _ORIGINAL_RUN  # type: ignore[method-assign]
        scp.stop()
        if hasattr(store, "close"):
            store.close()
    stats = None
    if profile:
        stats = pstats.Stats(_PROFILES[0])
        for p in _PROFILES[1:]:
            stats.add(p)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    return seconds, stats


def breakdown(stats: Any, n: int) -> list[tuple[str, float]]:
    """Own time (tottime) summed per group, in ms per instance."""
    totals: dict[str, float] = defaultdict(float)
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        group = next((g for g, match in GROUPS if match(file, name)), "other (Python builtins)")
        totals[group] += tottime
    return sorted(((g, 1000 * t / n) for g, t in totals.items()), key=lambda x: -x[1])


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--durability", choices=["fsync", "commit"], default="fsync")
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions by own time")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")
    work = Path(tempfile.mkdtemp(prefix="radloop-ingest-profile-"))
    try:
        series = work / "series"
        peers.make_synthetic_ct_series(series, n=args.n, rows=args.size, cols=args.size, seed=0)
        plain, _ = receive(series, args.n, work / "plain", args.durability, profile=False)
        profiled, stats = receive(series, args.n, work / "profiled", args.durability, profile=True)
        print(
            f"{args.n} × {args.size}² CT, durability {args.durability}: {args.n / plain:.1f} inst/s "
            f"unprofiled, {args.n / profiled:.1f} inst/s profiled"
        )
        print(f"{'where (own time, all threads)':<36} {'ms/instance':>11}")
        for group, ms in breakdown(stats, args.n):
            print(f"{group:<36} {ms:>11.2f}")
        if args.top:
            stats.sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
