"""Shared fixtures: real peers (Orthanc, DCMTK storescp) and the shared imaging data.

Peers are started on 127.0.0.1 with free ports. A missing binary fails the test (never skips);
with `CI` set, a session that selected `peers` tests fails before running anything.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

import peers
from helpers_data import ct_series_paths, series_ref_of
from radloop.pipelines.ports import Volume
from radloop.pipelines.volume import load_volume

# Binaries and files that `peers`-marked tests need.
PEER_BINARIES = (
    "Orthanc",
    "storescu",
    "storescp",
    "echoscu",
    "findscu",
    "movescu",
    "dcmdump",
    "dciodvfy",
    "chromium",
)


def _missing_peer_requirements() -> list[str]:
    missing = []
    for name in PEER_BINARIES:
        try:
            peers.require_binary(name)
        except pytest.fail.Exception as exc:
            missing.append(str(exc))
    if not peers.ORTHANC_DICOMWEB_PLUGIN.is_file():
        missing.append(f"{peers.ORTHANC_DICOMWEB_PLUGIN} missing: `apt-get install orthanc-dicomweb`")
    return missing


def pytest_collection_finish(session: pytest.Session) -> None:
    """In CI, fail at once (not per test, never skip) if selected peer tests lack their peers."""
    if not os.environ.get("CI"):
        return
    if not any(item.get_closest_marker("peers") for item in session.items):
        return
    missing = _missing_peer_requirements()
    if missing:
        pytest.exit("CI: peer tests selected but peers are missing:\n" + "\n".join(missing), returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """Attach the end of Orthanc's log to the report of a failing test that used Orthanc."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("orthanc_clean") or funcargs.get("orthanc")
    if isinstance(server, peers.OrthancServer):
        report.sections.append(("Orthanc log (tail)", server.log_text(8000)))


# --------------------------------------------------------------------------- peers


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.OrthancServer]:
    """One Orthanc (AET "ORTHANC", DICOMweb at `.dicomweb_url`) for the whole session.

    It may hold data from earlier tests: use `orthanc_clean` for an empty one. Declare radloop's
    AE with `orthanc.add_modality(...)` before it C-FINDs or C-MOVEs.
    """
    server = peers.OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc_clean(orthanc: peers.OrthancServer) -> peers.OrthancServer:
    """The session Orthanc, emptied of every patient before the test."""
    orthanc.clear()
    return orthanc


@pytest.fixture
def store_scp(tmp_path: Path) -> Iterator[peers.StoreSCP]:
    """A DCMTK storescp (AET "STORESCP", all transfer syntaxes) writing into `tmp_path/received`."""
    scp = peers.StoreSCP(tmp_path / "received", log_dir=tmp_path)
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared imaging data folder (`../shared/data`), read-only."""
    return peers.shared_data_dir()


@pytest.fixture(scope="session")
def t1_series_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 170-slice Philips T1 MR series, gunzipped once per session (treat as read-only)."""
    target = tmp_path_factory.mktemp("t1_series")
    peers.gunzip_series(shared_data / "mr-brain-t1-philips" / "series", target)
    return target


@pytest.fixture(scope="session")
def ct_j2k_series_dir(shared_data: Path) -> Path:
    """20 real CT slices in JPEG 2000 lossless with valid UIDs (read-only shared folder)."""
    return shared_data / "ct-abdomen-totalseg" / "series"


@pytest.fixture(scope="session")
def ct_bad_uid_dir(shared_data: Path) -> Path:
    """The same 20 CT slices as published: data-set SOP/Study/Series UIDs empty (bad input)."""
    return shared_data / "ct-abdomen-totalseg" / "example_ct_dicom"


@pytest.fixture(scope="session")
def synthetic_ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid synthetic CT series (16 slices of 128×128), made once per session."""
    target = tmp_path_factory.mktemp("synthetic_ct")
    peers.make_synthetic_ct_series(target, n=16, rows=128, cols=128, seed=0)
    return target


# --------------------------------------------------------------------------- volumes


@pytest.fixture(scope="module")
def t1_volume(t1_series_dir: Path) -> Volume:
    """The 170-slice T1 series as a Volume (loaded once per test module)."""
    paths = sorted(t1_series_dir.glob("*.dcm"))
    assert len(paths) == 170, f"expected the 170-file T1 series in {t1_series_dir}"
    return load_volume(paths, series_ref_of(paths[0]))


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    """The 20-slice JPEG 2000 CT series as a Volume (loaded once per test module)."""
    paths = ct_series_paths()
    return load_volume(paths, series_ref_of(paths[0]))


# --------------------------------------------------------------------------- PHI hygiene

_PHI_FOUND: list[str] = []


@functools.cache
def patient_identifiers_of_test_data() -> tuple[str, ...]:
    """PatientName and PatientID of the shared test data, read from the data headers themselves."""
    import gzip
    import io

    import pydicom

    data = peers.shared_data_dir()
    values: set[str] = set()
    headers = [sorted((data / "mr-brain-t1-philips" / "series").glob("*.dcm.gz"))[0]]
    headers += [sorted((data / "ct-abdomen-totalseg" / "series").iterdir())[0]]
    for path in headers:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        name = str(ds.get("PatientName", "") or "")
        values |= {str(ds.get("PatientID", "") or ""), name, name.split("^")[0]}  # the family name alone too
    return tuple(sorted(v for v in values if len(v) >= 6))  # a short value would match anything


def _phi_lines(text: str) -> list[str]:
    ids = patient_identifiers_of_test_data()
    return [line for line in text.splitlines() if any(v in line for v in ids)]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Log records of radloop code at INFO and above (pytest captures INFO+) must name no patient."""
    for line in _phi_lines(report.caplog):
        _PHI_FOUND.append(f"{report.nodeid} ({report.when}): {line[:300]}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Grep every ``radloop serve`` log of the run (``serve.log`` under the base temp folder, all
    xdist workers') and the captured records for the test data's patient names and IDs: any hit
    fails the run."""
    if hasattr(session.config, "workerinput"):
        return  # the controller checks, with every worker's reports and files
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        base = factory.getbasetemp()
        for log_file in sorted(base.rglob("serve.log")):
            for line in _phi_lines(log_file.read_text(errors="replace")):
                _PHI_FOUND.append(f"{log_file}: {line[:300]}")
    if _PHI_FOUND:
        print("\nPHI in log lines (patient names/IDs of the test data):\n" + "\n".join(_PHI_FOUND[:50]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
