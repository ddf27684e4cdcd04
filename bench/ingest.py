"""Ingest benchmark: how fast does radloop's C-STORE SCP take a CT series, next to real peers?

Sends one synthetic CT series (default 300 slices of 512×512, Explicit VR Little Endian) with
DCMTK `storescu` (identical options every time, `TCP_NODELAY=1`) to

  (a) DCMTK `storescp` writing files to disk (no fsync: the floor),
  (b) Orthanc with its storage on disk (fsyncs: `SyncStorageArea` is on by default),
  (c) `radloop serve` (by design acknowledges an instance once it is fsynced, renamed, indexed),

and prints instances/s and MB/s per peer and the ratios radloop ÷ storescp and radloop ÷ Orthanc.
Every run starts its receiver afresh on an empty folder, so no run sees duplicates; only the
`storescu` run itself is timed. All receivers write to the same file system (a temp folder).

Run (with the project venv from scripts/test):
    .venv/bin/python bench/ingest.py [--n 300] [--repeat 3] [--pdu 16384]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest  # only for pytest.fail.Exception, raised by peers.require_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above

CALLED_AE = "BENCH"
STORESCU_TIMEOUT_S = 180.0


@dataclass
class Leg:
    """One receiving peer: its name, the seconds of each timed storescu run, or why it failed."""

    name: str
    seconds: list[float] = field(default_factory=list)
    error: str | None = None


class LegFailed(Exception):
    """A leg of the benchmark could not run; the others go on."""


def timed_storescu(series_dir: Path, port: int, called_ae: str) -> float:
    """Send the series with storescu; return the wall time; raise LegFailed if it did not succeed.

    Always the same command: `storescu -R -aet BENCHSCU -aec BENCH -to 10 -ta 10 +sd +r HOST
    PORT DIR` (one association, uncompressed Explicit VR Little Endian as the files are).
    """
    started = time.perf_counter()
    proc = peers.storescu(
        series_dir,
        peers.LOCALHOST,
        port,
        called_ae,
        calling_ae="BENCHSCU",
        propose=None,
        timeout=STORESCU_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise LegFailed(f"storescu exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return elapsed


def expect_count(count: Callable[[], int], n: int, where: str) -> None:
    """Wait (bounded) until the receiver holds `n` instances."""
    try:
        peers.wait_for(lambda: count() == n, timeout=15, interval=0.2, what=f"{n} instances in {where}")
    except TimeoutError as exc:
        raise LegFailed(f"{exc}; found {count()}") from exc


def run_storescp(series_dir: Path, n: int, work: Path, run: int, pdu: int) -> float:
    out = work / f"storescp-{run}"
    scp = peers.StoreSCP(out, aet=CALLED_AE, log_dir=work, max_pdu=pdu or None, verbose=False)
    scp.start()
    try:
        seconds = timed_storescu(series_dir, scp.port, CALLED_AE)
        expect_count(lambda: len(scp.files()), n, str(out))
        return seconds
    finally:
        scp.stop()
        shutil.rmtree(out, ignore_errors=True)


def run_orthanc(series_dir: Path, n: int, work: Path, run: int, pdu: int) -> float:
    extra = {"MaximumPduLength": pdu} if pdu else {}
    server = peers.OrthancServer(work / f"orthanc-{run}", aet=CALLED_AE, extra_config=extra)
    server.start()
    try:
        seconds = timed_storescu(series_dir, server.dicom_port, CALLED_AE)
        expect_count(lambda: len(server.instances()), n, "Orthanc")
        return seconds
    except LegFailed as exc:
        raise LegFailed(f"{exc}\n--- Orthanc log ---\n{server.log_text(3000)}") from exc
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def radloop_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "radloop"
    if script.exists():
        return [str(script), "serve", "--config", str(config)]
    return [sys.executable, "-m", "radloop.cli", "serve", "--config", str(config)]


def run_radloop(series_dir: Path, n: int, work: Path, run: int, pdu: int) -> float:
    home = work / f"radloop-{run}"
    data_dir = home / "data"
    port = peers.free_port()
    home.mkdir(parents=True)
    config = home / "radloop.yaml"
    max_pdu = f", max_pdu: {pdu}" if pdu else ""
    config.write_text(
        f"data_dir: {data_dir}\n"
        f"dicom: {{host: {peers.LOCALHOST}, port: {port}, min_free_bytes: 0{max_pdu},\n"
        f"        listeners: [{{ae_title: {CALLED_AE}, pipelines: [none-such]}}]}}\n"
    )
    env = {k: v for k, v in peers.peer_env().items() if not k.startswith("RADLOOP_")}
    log_path = home / "radloop.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                radloop_command(config),
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise LegFailed(f"cannot start radloop serve: {exc}") from exc

        def log_tail() -> str:
            return log_path.read_text(errors="replace")[-2500:]

        def answers() -> bool:
            if proc.poll() is not None:
                raise LegFailed(f"`radloop serve` exited with {proc.returncode}")
            return peers.echoscu(peers.LOCALHOST, port, CALLED_AE, timeout=2).returncode == 0

        try:
            try:
                peers.wait_for(answers, timeout=60, interval=0.25, what=f"radloop C-ECHO on port {port}")
            except TimeoutError as exc:
                raise LegFailed(str(exc)) from exc
            seconds = timed_storescu(series_dir, port, CALLED_AE)
            instances = data_dir / "instances"
            expect_count(
                lambda: sum(1 for p in instances.rglob("*") if p.is_file()) if instances.is_dir() else 0,
                n,
                str(instances),
            )
            return seconds
        except LegFailed as exc:
            raise LegFailed(f"{exc}\n--- radloop log ---\n{log_tail()}") from exc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            shutil.rmtree(data_dir, ignore_errors=True)


# What ends one leg (reported, the others go on): our own failures, a peer that would not start
# (RuntimeError, TimeoutError, OSError), a hung storescu, a missing binary (pytest's Failed).
LEG_FAILURES = (
    LegFailed,
    RuntimeError,
    TimeoutError,
    OSError,
    subprocess.SubprocessError,
    pytest.fail.Exception,
)

LEGS: dict[str, Callable[[Path, int, Path, int, int], float]] = {
    "storescp": run_storescp,
    "Orthanc": run_orthanc,
    "radloop": run_radloop,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="instances in the series (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per peer; best and median reported")
    parser.add_argument(
        "--pdu",
        type=int,
        default=16384,
        help="maximum PDU every receiver accepts (storescp -pdu, Orthanc MaximumPduLength, radloop "
        "dicom.max_pdu); 0 = each one's own default (default 16384: the DCMTK and Orthanc default; "
        "radloop's own default is unlimited)",
    )
    parser.add_argument("--peers", default=",".join(LEGS), help=f"comma-separated subset of {','.join(LEGS)}")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.n < 1:
        parser.error("--n and --repeat must be at least 1")
    chosen = [name for name in LEGS if name.lower() in {p.strip().lower() for p in args.peers.split(",")}]

    work = Path(tempfile.mkdtemp(prefix="radloop-bench-ingest-", dir=args.workdir))
    try:
        series_dir = work / "series"
        started = time.perf_counter()
        files = peers.make_synthetic_ct_series(series_dir, n=args.n, rows=args.size, cols=args.size, seed=0)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"series: {len(files)} CT instances {args.size}x{args.size}, {megabytes:.1f} MB, made in "
            f"{time.perf_counter() - started:.1f} s in {work}; max PDU {args.pdu or 'per-peer default'}; "
            f"{args.repeat} run(s) per peer"
        )
        legs = []
        for name in chosen:
            leg = Leg(name)
            legs.append(leg)
            for run in range(args.repeat):
                try:
                    leg.seconds.append(LEGS[name](series_dir, len(files), work, run, args.pdu))
                except LEG_FAILURES as exc:
                    leg.error = str(exc) or type(exc).__name__
                    print(f"{name} leg failed: {exc}", file=sys.stderr)
                    break
                print(f"  {name} run {run + 1}: {leg.seconds[-1]:.2f} s", flush=True)
        print_table(legs, len(files), megabytes)
        return 0 if all(leg.error is None for leg in legs) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(legs: list[Leg], n: int, megabytes: float) -> None:
    print()
    print(
        f"{'peer':<10} {'runs':>4} {'best s':>7} {'median s':>8} {'inst/s best':>11} {'inst/s med':>10} "
        f"{'MB/s best':>9} {'MB/s med':>8}"
    )
    for leg in legs:
        if not leg.seconds:
            print(f"{leg.name:<10} failed: {(leg.error or '').splitlines()[0][:90]}")
            continue
        best, median = min(leg.seconds), statistics.median(leg.seconds)
        print(
            f"{leg.name:<10} {len(leg.seconds):>4} {best:>7.2f} {median:>8.2f} {n / best:>11.1f} "
            f"{n / median:>10.1f} {megabytes / best:>9.1f} {megabytes / median:>8.1f}"
        )
    by_name = {leg.name: leg for leg in legs if leg.seconds}
    radloop = by_name.get("radloop")
    if radloop is None:
        print("\nno radloop result: no ratios")
        return
    print("\nthroughput ratios (>1: radloop faster)")
    for peer in ("storescp", "Orthanc"):
        other = by_name.get(peer)
        if other is None:
            continue
        best = min(other.seconds) / min(radloop.seconds)
        median = statistics.median(other.seconds) / statistics.median(radloop.seconds)
        print(f"  radloop ÷ {peer:<8}  best {best:.2f}   median {median:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TCP_NODELAY", "1")
    raise SystemExit(main())
