"""Ingest benchmark: how fast does radloop's C-STORE SCP take a CT series, next to real peers?

One synthetic CT series per case (default 300 slices of 512×512, Explicit VR Little Endian) is
sent with DCMTK `storescu` (TCP_NODELAY=1, identical options every time) over one association,
then another such series over 4 parallel associations (4 storescu processes, 75 files each), to

  storescp         DCMTK `storescp --fork` writing files (no fsync: the floor),
  Orthanc          Orthanc with its storage on disk (default settings, `SyncStorageArea` on),
  radloop-fsync    `radloop serve`, dicom.durability fsync (the default: Success after fsync + index),
  radloop-commit   `radloop serve`, dicom.durability commit (Success after write + index, group fsync),

each receiver with its own default maximum PDU (`--pdu` forces one for all) and radloop with
its default number of listener processes (one per core). Rounds are interleaved (every receiver
once per round, in order) and each receiver starts afresh on an empty folder per round; only the
sends are timed, up to the last instance acknowledged, each right after 400 MB of scratch data
were written and deleted (`--recycle-mb`: every receiver writes into recycled page cache, see
`recycle_page_cache`); what the receivers wrote stays until the run ends (`keep_received_files`:
0.3 GB per receiver and round for the default series, checked before the run starts). Medians
over the rounds, and the ratios the issue sets targets for.

The sender comparison sends one series into one `storescp --fork` per round with `storescu`
(one process per association, its start-up timed) and with radloop's SCU (`radloop send`'s
code, called in this process, so Python's start-up is not timed), over 1 and over 4
associations, the two senders' order alternating by round; each leg must leave all n files in
storescp's (emptied) folder.

    .venv/bin/python bench/ingest.py [--n 300] [--repeat 3] [--pdu 0] [--recycle-mb 400]
                                     [--skip-sender | --sender-only]
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
from typing import Any

import pytest  # only for pytest.fail.Exception, raised by peers.require_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above

CALLED_AE = "BENCH"
STORESCU_TIMEOUT_S = 300.0
PARALLEL = 4


class LegFailed(Exception):
    """A leg of the benchmark could not run; the others go on."""


@dataclass
class Result:
    """Seconds per round for one receiver (or sender), one and four associations."""

    name: str
    one: list[float] = field(default_factory=list)
    four: list[float] = field(default_factory=list)
    error: str | None = None


def storescu_run(dirs: list[Path], port: int) -> float:
    """Send each folder with its own storescu process, all at once; the wall time until all end."""
    command = [
        peers.require_binary("storescu"),
        "-aet",
        "BENCHSCU",
        "-aec",
        CALLED_AE,
        "-to",
        "20",
        "-ta",
        "20",
    ]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*command, "+sd", peers.LOCALHOST, str(port), str(d)],
            env=peers.peer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for d in dirs
    ]
    outputs = [p.communicate(timeout=STORESCU_TIMEOUT_S)[0] for p in procs]
    elapsed = time.perf_counter() - started
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise LegFailed(f"storescu exited {p.returncode}: {out.strip()[-1500:]}")
    return elapsed


RECYCLE_MB = 400  # --recycle-mb's default


def recycle_page_cache(folder: Path, megabytes: int) -> None:
    """Write and delete ``megabytes`` of scratch data right before a timed leg, so that the
    receiver writes into memory pages the kernel has just freed.

    On a VM whose balloon driver reports free memory to the host (virtio-balloon free page
    reporting: the development VM has it), a page left free for a few seconds is handed back,
    and the first write into it faults on the host: writing 512 KiB into the page cache then
    takes ~1.3 ms instead of ~0.2 ms. Which receiver paid that depended on how long it took to
    start (storescp starts at once, ``radloop serve`` and Orthanc in seconds). On a server in
    steady state the page cache recycles its own pages; this puts every receiver there."""
    if megabytes <= 0:
        return
    scratch = folder / ".recycle-page-cache"
    block = bytes(1 << 20)
    with open(scratch, "wb") as f:
        for _ in range(megabytes):
            f.write(block)
    scratch.unlink()


def expect_count(count: Callable[[], int], n: int, where: str) -> None:
    try:
        peers.wait_for(lambda: count() >= n, timeout=60, interval=0.2, what=f"{n} instances in {where}")
    except TimeoutError as exc:
        raise LegFailed(f"{exc}; found {count()}") from exc


def _files_under(folder: Path) -> int:
    return (
        sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if folder.is_dir()
        else 0
    )


class StoreScp:
    """DCMTK storescp --fork (a child process per association) writing into a folder."""

    def __init__(self, work: Path, pdu: int) -> None:
        self.out = work / "storescp-out"
        self.out.mkdir(parents=True)
        self.port = peers.free_port()
        cmd = [peers.require_binary("storescp"), "--fork", "+xa", "-aet", CALLED_AE, "-od", str(self.out)]
        if pdu:
            cmd += ["-pdu", str(pdu)]
        self.proc = subprocess.Popen(
            [*cmd, str(self.port)], env=peers.peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        peers.wait_for(
            lambda: peers.echoscu(peers.LOCALHOST, self.port, CALLED_AE, timeout=2).returncode == 0,
            30,
            interval=0.1,
            what="storescp",
        )

    def count(self) -> int:
        return _files_under(self.out)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Orthanc:
    def __init__(self, work: Path, pdu: int) -> None:
        extra = {"MaximumPduLength": pdu} if pdu else {}
        self.server = peers.OrthancServer(work / "orthanc", aet=CALLED_AE, extra_config=extra)
        self.server.start()
        self.port = self.server.dicom_port

    def count(self) -> int:
        return len(self.server.instances())

    def stop(self) -> None:
        self.server.stop()


def _listener_processes() -> str:
    """``BENCH_LISTENER_PROCESSES=N`` in the environment sets ``dicom.listener_processes`` (default:
    radloop's own, one per core)."""
    n = os.environ.get("BENCH_LISTENER_PROCESSES", "")
    return f" listener_processes: {int(n)}," if n else ""


class Radloop:
    """`radloop serve` with one listener that routes to no pipeline."""

    def __init__(self, work: Path, pdu: int, durability: str) -> None:
        self.data = work / "data"
        self.port = peers.free_port()
        work.mkdir(parents=True, exist_ok=True)
        config = work / "radloop.yaml"
        max_pdu = f", max_pdu: {pdu}" if pdu else ""
        config.write_text(
            f"data_dir: {self.data}\n"
            f"api: {{enabled: false}}\n"
            f"pipelines: {{include_reference: false}}\n"  # no models to warm: start-up is not timed anyway
            f"dicom: {{host: {peers.LOCALHOST}, port: {self.port}, min_free_bytes: 0{max_pdu},\n"
            f"        durability: {durability},{_listener_processes()}\n"
            f"        listeners: [{{ae_title: {CALLED_AE}, pipelines: [none-such]}}]}}\n"
        )
        env = {k: v for k, v in peers.peer_env().items() if not k.startswith("RADLOOP_")}
        self.log_path = work / "radloop.log"
        command = [sys.executable, "-m", "radloop.cli"]  # this interpreter's radloop (PYTHONPATH kept)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*command, "serve", "--config", str(config)],
                env=env,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise LegFailed(f"radloop serve exited {self.proc.returncode}: {self.log_tail()}")
            return "radloop ready" in self.log_path.read_text(errors="replace")

        try:
            peers.wait_for(ready, 300, interval=0.5, what="radloop ready")
        except TimeoutError as exc:
            self.stop()
            raise LegFailed(f"{exc}: {self.log_tail()}") from exc

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2500:]

    def count(self) -> int:
        return _files_under(self.data / "instances")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


RECEIVERS: dict[str, Callable[[Path, int], Any]] = {
    "storescp": StoreScp,
    "Orthanc": Orthanc,
    "radloop-fsync": lambda work, pdu: Radloop(work, pdu, "fsync"),
    "radloop-commit": lambda work, pdu: Radloop(work, pdu, "commit"),
}

# What ends one leg (reported, the others go on)
LEG_FAILURES = (
    LegFailed,
    RuntimeError,
    TimeoutError,
    OSError,
    subprocess.SubprocessError,
    pytest.fail.Exception,
)


def split(files: list[Path], into: Path, parts: int) -> list[Path]:
    """``parts`` folders of symbolic links, each with every n-th file."""
    dirs = []
    for index in range(parts):
        d = into / f"part{index}"
        d.mkdir(parents=True)
        for f in files[index::parts]:
            (d / f.name).symlink_to(f)
        dirs.append(d)
    return dirs


def receive_round(
    result: Result, make: Callable[[Path, int], Any], cases: dict[str, Any], work: Path, pdu: int
) -> None:
    receiver = make(work, pdu)
    try:
        recycle_page_cache(work, cases["recycle_mb"])
        result.one.append(storescu_run([cases["one"]], receiver.port))
        expect_count(receiver.count, cases["n"], result.name)
        recycle_page_cache(work, cases["recycle_mb"])
        result.four.append(storescu_run(cases["four"], receiver.port))
        expect_count(receiver.count, 2 * cases["n"], result.name)
    finally:
        receiver.stop()  # its files stay until the run ends: see keep_received_files


def sender_round(
    results: dict[str, Result], cases: dict[str, Any], work: Path, pdu: int, round_: int
) -> None:
    """Both senders into `storescp --fork`, over 1 then 4 associations; the order of the two
    senders alternates by round. Each leg has a storescp of its own, on an empty folder, and must
    leave all n files in it."""
    from radloop.connector.dimse.scu import send_files

    files = sorted(cases["one"].iterdir())
    for associations in (1, PARALLEL):
        order = ("storescu", "radloop send") if round_ % 2 == 0 else ("radloop send", "storescu")
        for name in order:
            result = results[name]
            if result.error:
                continue
            receiver = StoreScp(work / f"{name.replace(' ', '-')}-{associations}", pdu)
            try:
                recycle_page_cache(work, cases["recycle_mb"])
                if name == "storescu":
                    dirs = [cases["one"]] if associations == 1 else cases["one-split"]
                    seconds = storescu_run(dirs, receiver.port)
                else:
                    started = time.perf_counter()
                    report = send_files(
                        files,
                        peers.LOCALHOST,
                        receiver.port,
                        CALLED_AE,
                        "BENCHSCU",
                        timeout_s=STORESCU_TIMEOUT_S,
                        associations=associations,
                    )
                    seconds = time.perf_counter() - started
                    if report.failed:
                        raise LegFailed(f"{len(report.failed)} failed: {report.failed[0][1]}")
                expect_count(receiver.count, cases["n"], f"storescp from {name}")
            except LEG_FAILURES as exc:
                result.error = str(exc) or type(exc).__name__
                print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
                continue
            finally:
                receiver.stop()
            (result.one if associations == 1 else result.four).append(seconds)


def keep_received_files(work: Path, megabytes: float, legs: int) -> None:
    """Every received file stays until the run ends (``work`` is removed then); refuse to start
    without room for them all.

    Deleting one receiver's 600 files right before the next receiver's legs slowed every receiver
    that followed on the development VM: ext4 without a journal skips inodes deleted in the last
    seconds to minutes when it allocates one (``recently_deleted``), so each new file's inode
    search walked past the previous legs' deletions (``perf``: ``find_inode_bit``,
    ``recently_deleted``). Keeping them costs disk space, not time."""
    needed = int(megabytes * 1e6 * legs) + (2 << 30)
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(
            f"the run keeps every received file until it ends: it needs about {needed / 1e9:.1f} GB "
            f"free under {work}, {free / 1e9:.1f} GB are (fewer --repeat or --n, or --workdir elsewhere)"
        )


def _last(seconds: list[float]) -> str:
    return f"{seconds[-1]:.2f} s" if seconds else "-"


def median_rate(n: int, seconds: list[float]) -> float | None:
    return n / statistics.median(seconds) if seconds else None


def fmt(rate: float | None) -> str:
    return f"{rate:8.1f}" if rate is not None else "  failed"


def print_tables(receivers: list[Result], senders: list[Result], n: int, megabytes: float) -> None:
    rounds_done = len(receivers[0].one) if receivers else 0
    print(f"\nreceivers: instances/s, median of {rounds_done} round(s)")
    print(
        f"{'receiver':<16} {'1 assoc':>8} {'4 assoc':>8} {'MB/s 1':>7} {'MB/s 4':>7}  rounds (s, 1 | 4 assoc)"
    )
    rates: dict[str, tuple[float | None, float | None]] = {}
    for r in receivers:
        one, four = median_rate(n, r.one), median_rate(n, r.four)
        rates[r.name] = (one, four)
        mb1 = f"{one * megabytes / n:7.1f}" if one else "      -"
        mb4 = f"{four * megabytes / n:7.1f}" if four else "      -"
        rounds = " ".join(f"{s:.1f}" for s in r.one) + " | " + " ".join(f"{s:.1f}" for s in r.four)
        failed = f"  {(r.error or '')[:80]}" if r.error else ""
        print(f"{r.name:<16} {fmt(one)} {fmt(four)} {mb1} {mb4}  {rounds}{failed}")

    def ratio(a: str, b: str, i: int) -> str:
        x, y = rates.get(a, (None, None))[i], rates.get(b, (None, None))[i]
        return f"{x / y:5.2f}" if x and y else "    -"

    rows = [
        ("radloop-fsync", "Orthanc", "≥ 1.0 (1 assoc), ≥ 1.5 (4 assoc)"),
        ("radloop-commit", "Orthanc", ""),
        ("radloop-fsync", "storescp", ""),
        ("radloop-commit", "storescp", "≥ 0.5 (1 assoc)"),
    ]
    print("\nratios (medians)                    1 assoc  4 assoc   targets")
    for a, b, target in rows:
        print(f"  {a:<15}÷ {b:<17} {ratio(a, b, 0)}    {ratio(a, b, 1)}   {target}")
    print_senders(senders, n)


def print_senders(senders: list[Result], n: int) -> None:
    """The sender comparison: medians, every round, and radloop send ÷ storescu."""
    if not senders:
        return
    rounds_done = max(len(r.one) for r in senders)
    print(f"\nsenders into storescp --fork: instances/s, median of {rounds_done} round(s)")
    print(f"{'sender':<16} {'1 assoc':>8} {'4 assoc':>8}  rounds (s, 1 | 4 assoc)")
    srates = {}
    for r in senders:
        srates[r.name] = (median_rate(n, r.one), median_rate(n, r.four))
        rounds = " ".join(f"{s:.2f}" for s in r.one) + " | " + " ".join(f"{s:.2f}" for s in r.four)
        failed = f"  {(r.error or '')[:80]}" if r.error else ""
        print(f"{r.name:<16} {fmt(srates[r.name][0])} {fmt(srates[r.name][1])}  {rounds}{failed}")
    a, b = srates.get("radloop send", (None, None)), srates.get("storescu", (None, None))
    parts = [f"{a[i] / b[i]:.2f}" if a[i] and b[i] else "-" for i in (0, 1)]
    print(f"  radloop send ÷ storescu: {parts[0]} (1 assoc), {parts[1]} (4 assoc)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="instances per series (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--pdu",
        type=int,
        default=0,
        help="maximum PDU every receiver accepts; 0 = each one's default (default)",
    )
    parser.add_argument("--peers", default=",".join(RECEIVERS), help=f"subset of {','.join(RECEIVERS)}")
    parser.add_argument("--skip-sender", action="store_true", help="no sender comparison")
    parser.add_argument("--sender-only", action="store_true", help="only the sender comparison")
    parser.add_argument(
        "--recycle-mb",
        type=int,
        default=RECYCLE_MB,
        help=f"scratch MB written and deleted before each timed leg, 0 = none (default {RECYCLE_MB})",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.n < PARALLEL:
        parser.error(f"--repeat must be at least 1 and --n at least {PARALLEL}")
    wanted = {p.strip().lower() for p in args.peers.split(",")}
    chosen = [] if args.sender_only else [name for name in RECEIVERS if name.lower() in wanted]
    if args.sender_only and args.skip_sender:
        parser.error("--sender-only and --skip-sender exclude each other")

    work = Path(tempfile.mkdtemp(prefix="radloop-bench-ingest-", dir=args.workdir))
    try:
        started = time.perf_counter()
        one = peers.make_synthetic_ct_series(work / "one", n=args.n, rows=args.size, cols=args.size, seed=0)
        four = peers.make_synthetic_ct_series(work / "four", n=args.n, rows=args.size, cols=args.size, seed=1)
        cases = {
            "n": args.n,
            "one": work / "one",
            "four": split(four, work / "four-split", PARALLEL),
            "one-split": split(one, work / "one-split", PARALLEL),
            "recycle_mb": args.recycle_mb,
        }
        megabytes = sum(f.stat().st_size for f in one) / 1e6
        legs = (2 * len(chosen) + (0 if args.skip_sender else 4)) * args.repeat  # senders: 2 × (1, 4 assoc)
        keep_received_files(work, megabytes, legs)
        load = os.getloadavg()
        print(
            f"series: {args.n} CT instances {args.size}x{args.size}, {megabytes:.1f} MB, made in "
            f"{time.perf_counter() - started:.1f} s; max PDU {args.pdu or 'each receiver default'}; "
            f"{args.recycle_mb} MB of page cache recycled before each timed leg; "
            f"{args.repeat} interleaved round(s); {os.cpu_count()} CPUs; "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
            flush=True,
        )
        receivers = [Result(name) for name in chosen]
        senders = [] if args.skip_sender else [Result("storescu"), Result("radloop send")]
        for round_ in range(args.repeat):
            for result in receivers:
                if result.error:
                    continue
                try:
                    receive_round(
                        result, RECEIVERS[result.name], cases, work / f"{result.name}-{round_}", args.pdu
                    )
                    print(
                        f"  round {round_ + 1} {result.name}: "
                        f"{result.one[-1]:.2f} s (1) {result.four[-1]:.2f} s (4)",
                        flush=True,
                    )
                except LEG_FAILURES as exc:
                    result.error = str(exc) or type(exc).__name__
                    print(f"{result.name} failed: {exc}", file=sys.stderr, flush=True)
            if senders and not all(s.error for s in senders):
                try:
                    sender_round(
                        {s.name: s for s in senders}, cases, work / f"senders-{round_}", args.pdu, round_
                    )
                except LEG_FAILURES as exc:  # storescp did not start
                    for s in senders:
                        s.error = s.error or str(exc) or type(exc).__name__
                    print(f"sender comparison failed: {exc}", file=sys.stderr, flush=True)
                print(
                    f"  round {round_ + 1} senders: "
                    + ", ".join(f"{s.name} {_last(s.one)} (1) {_last(s.four)} (4)" for s in senders),
                    flush=True,
                )
        if receivers:
            print_tables(receivers, senders, args.n, megabytes)
        else:
            print_senders(senders, args.n)
        load = os.getloadavg()
        print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        return 0 if all(r.error is None for r in receivers + senders) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TCP_NODELAY", "1")
    raise SystemExit(main())
