"""DICOM TLS benchmark: what does TLS cost radloop's SCP, next to what it costs DCMTK's?

Sends the 170-slice T1 MR series (``../shared/data/mr-brain-t1-philips``) with DCMTK ``storescu``
(identical options every time, ``TCP_NODELAY=1``), plain and with ``+tls`` (certificates made
by ``openssl`` here, ECDSA P-256, client certificate required), to

  (a) DCMTK ``storescp`` writing files to disk, plain and ``+tls`` (the reference peer),
  (b) radloop's SCP (``StorageSCP`` in this process: checked, fsynced, indexed), one listener
      with ``tls: optional`` on its plain port and on its TLS port,

and prints MB/s per leg and the ratios TLS ÷ plain for each receiver. Runs alternate between
legs (plain, TLS, plain, TLS…) so that a busy machine slows every leg alike; every radloop run
stores into a fresh data folder, so no run sees duplicates.

Run:  .venv/bin/python bench/dicom_tls.py [--repeat 3]
This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import peers  # noqa: E402 - lives in tests/, put on sys.path just above
from pki import Credential, Pki  # noqa: E402
from radloop.connector.dimse.scp import StorageSCP  # noqa: E402
from radloop.connector.store import InstanceStore  # noqa: E402
from radloop.core import db  # noqa: E402
from radloop.core.settings import load_settings  # noqa: E402

AE = "BENCH"
LOCAL = "127.0.0.1"


def _storescu(series: Path, port: int, tls: list[str]) -> float:
    """Wall time of one storescu run (``tls``: its ``+tls …`` options, or none)."""
    t0 = time.perf_counter()
    done = peers.storescu(series, LOCAL, port, AE, "BENCHSCU", tls)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-2000:]}")
    return seconds


def _dcmtk_storescp(out: Path, port: int, tls: list[str], client_tls: list[str]) -> subprocess.Popen[bytes]:
    """DCMTK storescp on ``port`` (``tls``: its ``+tls …`` options), once it answers C-ECHO."""
    cmd = [peers.require_binary("storescp"), "+xa", "-aet", AE, "-od", str(out), *tls, str(port)]
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=peers.peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers = lambda: peers.echoscu(LOCAL, port, AE, timeout=2, extra_args=client_tls).returncode == 0  # noqa: E731
    peers.wait_for(answers, 20, what=f"storescp on {port}")
    return proc


class RadloopScp:
    """radloop's SCP in this process, on a fresh data folder, plain port and TLS port."""

    def __init__(self, work: Path, server: Credential, ca: Path) -> None:
        tls = {"port": 0, **server.tls_files(), "ca_certificates": str(ca)}
        self.settings = load_settings(
            data_dir=str(work / "data"),
            dicom={"host": LOCAL, "port": 0, "min_free_bytes": 0, "tls": tls,
                   "listeners": [{"ae_title": AE, "tls": "optional"}]},
        )  # fmt: skip
        db.upgrade(self.settings)
        self.engine = db.make_engine(self.settings)
        self.scp = StorageSCP(
            self.settings, InstanceStore(self.settings.data_dir, self.engine), lambda *_: None
        )
        self.port = self.scp.start()
        assert self.scp.tls_port is not None
        self.tls_port = self.scp.tls_port

    def stop(self) -> None:
        self.scp.stop()
        self.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("radloop").setLevel(logging.ERROR)  # per-connection warnings would bury the table
    work = Path(tempfile.mkdtemp(prefix="radloop-bench-tls-"))
    series = work / "t1"
    files = peers.gunzip_series(peers.shared_data_dir() / "mr-brain-t1-philips" / "series", series)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    pki = Pki(work / "pki")
    server, client = pki.issue("server", "localhost"), pki.issue("client", "BENCHSCU")
    server_tls = ["+tls", str(server.private_key), str(server.certificate), "+cf", str(pki.ca.certificate)]
    client_tls = client.dcmtk_args(pki.ca.certificate)

    legs: dict[str, list[float]] = {k: [] for k in ("storescp", "storescp+tls", "radloop", "radloop+tls")}

    def dcmtk(tls: list[str], client_args: list[str]) -> Callable[[int], float]:
        def run(i: int) -> float:
            port = peers.free_port()
            proc = _dcmtk_storescp(work / f"storescp-{len(tls)}-{i}", port, tls, client_args)
            try:
                return _storescu(series, port, client_args)
            finally:
                proc.terminate()
                proc.wait(timeout=10)

        return run

    def radloop(secure: bool) -> Callable[[int], float]:
        def run(i: int) -> float:
            scp = RadloopScp(work / f"radloop-{secure}-{i}", server, pki.ca.certificate)
            try:
                return _storescu(series, scp.tls_port if secure else scp.port, client_tls if secure else [])
            finally:
                scp.stop()

        return run

    runs = [
        ("storescp", dcmtk([], [])),
        ("storescp+tls", dcmtk(server_tls, client_tls)),
        ("radloop", radloop(False)),
        ("radloop+tls", radloop(True)),
    ]
    for i in range(args.repeat):
        for name, run in runs:
            legs[name].append(run(i))
    print(f"T1 series: {len(files)} files, {megabytes:.1f} MB; {args.repeat} run(s) per leg, median shown")
    medians = {name: statistics.median(s) for name, s in legs.items()}
    for name, seconds in medians.items():
        print(f"  {name:14s} {seconds:6.2f} s  {megabytes / seconds:7.1f} MB/s")
    print(f"TLS ÷ plain, time: storescp {medians['storescp+tls'] / medians['storescp']:.2f}, "
          f"radloop {medians['radloop+tls'] / medians['radloop']:.2f}")  # fmt: skip
    print(f"radloop ÷ storescp, time: plain {medians['radloop'] / medians['storescp']:.2f}, "
          f"TLS {medians['radloop+tls'] / medians['storescp+tls']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
