"""Fixed-seed fuzzing subsets for CI (issue: hostile input). The full coverage-guided runs
(10 000 inputs per target, atheris) are ``bench/fuzz.py``; both use the targets in
``tests/fuzzing.py``. Every finding there becomes a regression test here or beside the code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import fuzzing
import peers
from radloop_proc import RadloopServer

CI_INPUTS = 500
SEED = 20261206


def _run(name: str, target: fuzzing.Target, corpus: list[bytes]) -> list[fuzzing.Finding]:
    findings = []
    for data in fuzzing.inputs(corpus, SEED, CI_INPUTS):
        found = fuzzing.run_target(name, target, data)
        if found is not None:
            findings.append(found)
    return findings


@pytest.mark.parametrize("name", ["header_store", "volume", "multipart", "qido"])
def test_in_process_targets_raise_only_radloop_errors(name: str, tmp_path: Path) -> None:
    if name == "header_store":
        target, corpus = fuzzing.header_store_target(tmp_path)
    elif name == "volume":
        target, corpus = fuzzing.volume_target(tmp_path)
    elif name == "multipart":
        target, corpus = fuzzing.multipart_target()
    else:
        target, corpus = fuzzing.qido_target()
    findings = _run(name, target, corpus)
    assert not findings, "\n".join(str(f) for f in findings[:10])


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadloopServer]:
    workdir = tmp_path_factory.mktemp("fuzz-scp")
    config = {"dicom": {"listeners": [{"ae_title": "RADLOOP"}]}, "api": {"enabled": False}}
    with RadloopServer(workdir, config) as server:
        yield server


@pytest.mark.peers
@pytest.mark.slow
def test_pdu_fuzzing_leaves_the_scp_serving(scp: RadloopServer) -> None:
    """500 mutated A-ASSOCIATE / P-DATA / A-RELEASE / A-ABORT PDUs: the process stays up, C-ECHO works."""
    for i, data in enumerate(fuzzing.inputs(fuzzing.pdu_seeds(), SEED, CI_INPUTS)):
        fuzzing.send_pdu_bytes("127.0.0.1", scp.port, data, read_timeout_s=0.05)
        if i % 100 == 99:
            assert scp.proc is not None and scp.proc.poll() is None, scp.log_text()[-4000:]
            echo = peers.echoscu("127.0.0.1", scp.port, "RADLOOP")
            assert echo.returncode == 0, f"C-ECHO failed after {i + 1} fuzzed PDUs: {echo.stderr}"
    assert "Exception in thread" not in scp.log_text(), scp.log_text()[-4000:]
