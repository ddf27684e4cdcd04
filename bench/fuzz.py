"""Coverage-guided fuzzing, nightly style: 10 000 inputs per target with atheris (libFuzzer), plus
the PDU-level fuzzer against a running ``radloop serve``. CI runs a fixed-seed 500-input subset of
the same targets (``tests/integration/test_fuzz_subset.py``).

Run (project venv from scripts/test, `pip install atheris` once):
    .venv/bin/python bench/fuzz.py --target header_store [--runs 10000] [--seed 1]
    .venv/bin/python bench/fuzz.py --target pdu [--runs 10000]
Targets: header_store, volume, multipart, qido (each in its own process: atheris owns the process),
pdu. Prints the number of inputs, findings (exceptions that are not RadloopError) and, for pdu,
whether the server stayed up and answered C-ECHO throughout. Each finding's input is written to
``--out`` (default ./fuzz-findings/) so it can become a regression test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # noqa: E402


def in_process(name: str, runs: int, seed: int, out: Path) -> int:
    import atheris

    workdir = Path(tempfile.mkdtemp(prefix=f"radloop-fuzz-{name}-"))
    factories = {
        "header_store": lambda: fuzzing.header_store_target(workdir),
        "volume": lambda: fuzzing.volume_target(workdir),
        "multipart": fuzzing.multipart_target,
        "qido": fuzzing.qido_target,
    }
    with atheris.instrument_imports(include=["radloop"]):
        target, corpus = factories[name]()
    corpus_dir = workdir / "corpus"
    corpus_dir.mkdir()
    for i, data in enumerate(corpus):
        (corpus_dir / f"seed{i}").write_bytes(data)
    findings: list[fuzzing.Finding] = []
    started = time.monotonic()
    done = [0]

    def one(data: bytes) -> None:
        done[0] += 1
        if done[0] == runs:  # libFuzzer exits without running atexit handlers
            report()
        found = fuzzing.run_target(name, target, data)
        if found is not None:
            findings.append(found)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}-{len(findings):05d}.bin").write_bytes(data)

    def report() -> None:
        kinds = sorted({f"{type(f.error).__name__}: {str(f.error)[:100]}" for f in findings})
        print(f"{name}: {done[0]} inputs in {time.monotonic() - started:.0f} s, {len(findings)} finding(s)")
        for k in kinds[:20]:
            print(f"  {k}")

    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-max_len=65536", str(corpus_dir)], one)
    atheris.Fuzz()
    return 0


def pdu(runs: int, seed: int) -> int:
    import peers
    from radloop_proc import RadloopServer

    workdir = Path(tempfile.mkdtemp(prefix="radloop-fuzz-pdu-"))
    config = {"dicom": {"listeners": [{"ae_title": "RADLOOP"}]}, "api": {"enabled": False}}
    failures = 0
    started = time.monotonic()
    with RadloopServer(workdir, config) as server:
        for i, data in enumerate(fuzzing.inputs(fuzzing.pdu_seeds(), seed, runs)):
            fuzzing.send_pdu_bytes("127.0.0.1", server.port, data, read_timeout_s=0.05)
            if i % 500 == 499:
                alive = server.proc is not None and server.proc.poll() is None
                echo = peers.echoscu("127.0.0.1", server.port, "RADLOOP")
                if not alive or echo.returncode != 0:
                    failures += 1
                    print(
                        f"after {i + 1} PDUs: alive={alive} echo rc={echo.returncode} {echo.stderr.strip()}"
                    )
        crashed_threads = server.log_text().count("Exception in thread")
    print(
        f"pdu: {runs} inputs in {time.monotonic() - started:.0f} s; C-ECHO failures {failures}; "
        f"reactor-thread exceptions {crashed_threads}"
    )
    return 1 if failures or crashed_threads else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target", required=True, choices=["header_store", "volume", "multipart", "qido", "pdu"]
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()
    if args.target == "pdu":
        return pdu(args.runs, args.seed)
    return in_process(args.target, args.runs, args.seed, args.out)


if __name__ == "__main__":
    sys.exit(main())
