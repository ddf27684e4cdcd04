"""Real DICOM peers for tests and benchmarks: Orthanc, DCMTK tools, dciodvfy, and test data.

Everything here talks to 127.0.0.1 only. Every wait is bounded (`wait_for`) and every peer
process is started by us and stopped by us (SIGTERM, then SIGKILL). A missing binary fails the
test with an install hint; it never skips.

This is a plain module: `conftest.py` and the tests import it as `peers` (pytest puts `tests/`
on `sys.path`); `bench/ingest.py` puts `tests/` on `sys.path` itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LOCALHOST = "127.0.0.1"
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

# Debian package providing each binary we run (the install hint in `require_binary`).
_DEBIAN_PACKAGE = {
    "Orthanc": "orthanc orthanc-dicomweb",
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "echoscu": "dcmtk",
    "findscu": "dcmtk",
    "movescu": "dcmtk",
    "dcmdump": "dcmtk",
    "dciodvfy": "dicom3tools",
    "chromium": "chromium",
    "dcm2niix": "dcm2niix",
    "openssl": "openssl",
}

# storescu proposes only uncompressed transfer syntaxes unless told otherwise; to send a
# compressed file as it is, propose its transfer syntax with the matching option (each option
# also proposes all uncompressed syntaxes). Transfer syntaxes with no option here (e.g. JPEG
# Lossless Process 14 `1.2.840.10008.1.2.4.57`, HTJ2K) need an association profile (`-xf`).
STORESCU_PROPOSE_OPTION = {
    "1.2.840.10008.1.2.1.99": "-xd",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
}
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}

T = TypeVar("T")


# --------------------------------------------------------------------------- generic helpers


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_SLOTS = 8  # xdist workers get disjoint slices of the port block
_next_port: dict[str, int] = {}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, for a peer the test will start.

    The port lies *below* the kernel's ephemeral range, so no client socket on this machine is ever
    given it as its source port: a server that is stopped (or killed) and restarted on the same port
    cannot find it taken by some other test's outgoing connection in between (it happened, in CI, to a
    kill -9 test). Each xdist worker takes its own slice of that block, so workers never pick the same
    port; within a slice, ports are handed out round-robin and each is checked by binding it.
    """
    top = _ephemeral_low() - 1
    bottom = max(1024, top - 16000)
    if top - bottom < 2 * _PORT_SLOTS * 100:  # a machine with an unusual range: let the OS pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            return int(sock.getsockname()[1])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    slot = int(worker[2:]) % _PORT_SLOTS if worker[2:].isdigit() else 0
    width = (top - bottom) // _PORT_SLOTS
    start = bottom + slot * width
    offset = _next_port.get(worker, (os.getpid() * 7919) % width)
    for _ in range(width):
        port = start + offset % width
        offset += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
        _next_port[worker] = offset
        return port
    raise RuntimeError(f"no free TCP port in {start}..{start + width - 1}")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Call `predicate` until it returns a truthy value and return that value.

    Bounded in time (`timeout` seconds) and in count (timeout / interval + 1 calls). Raises
    `TimeoutError` naming `what` if the predicate never became true. Exceptions raised by the
    predicate propagate: a predicate that can fail transiently must catch that itself.
    """
    deadline = time.monotonic() + timeout
    max_calls = int(timeout / interval) + 2
    for _ in range(max_calls):
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def require_binary(name: str) -> str:
    """Return the path of the executable `name`, or fail the test with an install hint.

    Searches PATH, then /usr/sbin (where Debian puts Orthanc). For the DCMTK tools, scripts are
    passed over: pynetdicom installs Python apps called `storescu`, `storescp`, `echoscu`,
    `findscu`, `movescu` into the venv's `bin`, which comes first on PATH in an activated venv.
    """
    search = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/local/sbin"]
    for directory in filter(None, search):
        found = shutil.which(name, path=directory)
        if found is None:
            continue
        if _DEBIAN_PACKAGE.get(name) == "dcmtk" and _is_script(Path(found)):
            continue
        return found
    package = _DEBIAN_PACKAGE.get(name, "<the package providing it>")
    pytest.fail(
        f"required binary {name!r} not found on PATH (or /usr/sbin); "
        f"install it with `apt-get install {package}`",
        pytrace=False,
    )


def _is_script(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def peer_env() -> dict[str, str]:
    """Environment for peer processes: ours plus `TCP_NODELAY=1` (read by DCMTK and Orthanc)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM `proc`, wait up to `grace` seconds, then SIGKILL it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def shared_data_dir() -> Path:
    """The shared test data folder, `../shared/data` from the repository root."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared test data not found at {path} (see ../shared/data/README.md)", pytrace=False)
    return path


# --------------------------------------------------------------------------- Orthanc


class OrthancServer:
    """An Orthanc process with its own configuration, storage and log in `workdir`.

    HTTP and DICOM ports are free ports; the REST API is reached on 127.0.0.1 only
    (`RemoteAccessAllowed: false`). Note: Orthanc 1.10 has no bind-address option, so both
    ports listen on all interfaces; remote HTTP clients are refused, remote DICOM is not.
    `modalities` maps a name to `(AET, host, port)`; Orthanc answers C-FIND / C-MOVE only
    from AEs listed there (they can also be added later with `add_modality`). With `credentials`
    (user, password) the REST API and DICOMweb require HTTP basic authentication.

    The ports are chosen once, here: `stop()` then `start()` brings the same server back on the
    same ports with the same storage (a PACS that was down for a while).
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: dict[str, Any] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.credentials = credentials
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log_path = self.workdir / "orthanc.log"
        self.storage_dir = self.workdir / "storage"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        return {
            "Name": "radloop-test-orthanc",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.credentials is not None,
            "RegisteredUsers": dict([self.credentials]) if self.credentials else {},
            "HttpDescribeErrors": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            # Every standard transfer syntax (all start 1.2.840.10008.1.), incl. JPEG 2000.
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "UnknownSopClassAccepted": True,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 10,
            "SaveJobs": False,
            "StableAge": 2,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "Host": f"{LOCALHOST}:{self.http_port}",
            },
            **self.extra_config,
        }

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until `/system` answers."""
        binary = require_binary("Orthanc")
        if not ORTHANC_DICOMWEB_PLUGIN.is_file():
            pytest.fail(
                f"Orthanc DICOMweb plugin missing at {ORTHANC_DICOMWEB_PLUGIN}; "
                "install it with `apt-get install orthanc-dicomweb`",
                pytrace=False,
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [binary, "--no-jobs", str(config_path)],
            cwd=self.workdir,
            env=peer_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._answers, timeout, interval=0.1, what=f"Orthanc REST API at {self.url}/system")
        except BaseException as exc:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {exc}\n--- {self.log_path} ---\n{log}") from exc
        return self

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {self._proc.returncode}")
        try:
            self.get_json("/system", timeout=1.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 10 s) and close its log."""
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def destination(self, name: str = "pacs", **extra: object) -> dict[str, object]:
        """radloop's settings for this Orthanc as a C-STORE destination called ``name``."""
        return {
            "kind": "dicom",
            "name": name,
            "host": "127.0.0.1",
            "port": self.dicom_port,
            "ae_title": self.aet,
            **extra,
        }

    def log_text(self, tail_chars: int = 20_000) -> str:
        """The end of Orthanc's log (shown when something fails)."""
        if not self.log_path.exists():
            return "<no log>"
        return self.log_path.read_text(errors="replace")[-tail_chars:]

    # REST API ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Call the REST API and return the response body; HTTP errors carry Orthanc's log."""
        headers = dict(headers or {})
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(
                f"Orthanc {method} {path} -> HTTP {exc.code}: {detail}\n--- log ---\n{self.log_text(4000)}"
            ) from exc

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        return json.loads(self.request("GET", path, timeout=timeout))

    def instances(self) -> list[str]:
        """Orthanc identifiers of all stored instances."""
        return list(self.get_json("/instances"))

    def series(self) -> list[str]:
        """Orthanc identifiers of all stored series."""
        return list(self.get_json("/series"))

    def series_info(self, series_id: str) -> dict[str, Any]:
        """`/series/<id>`: MainDicomTags, Instances, ParentStudy, ..."""
        return dict(self.get_json(f"/series/{series_id}"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file, byte for byte."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """`/instances/<id>/simplified-tags`: keyword → value."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def instance_metadata(self, instance_id: str, name: str) -> str:
        """One metadata item, e.g. `TransferSyntax`, `RemoteAET`, `SopClassUid`."""
        return self.request("GET", f"/instances/{instance_id}/metadata/{name}").decode()

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or replace) a DICOM modality at run time, e.g. radloop's SCP."""
        body = json.dumps({"AET": aet, "Host": host, "Port": port}).encode()
        self.request("PUT", f"/modalities/{name}", body=body)

    def clear(self, max_patients: int = 10_000) -> None:
        """Delete every stored patient (and so every study, series, instance)."""
        patients = self.get_json("/patients")
        if len(patients) > max_patients:
            raise RuntimeError(f"refusing to clear {len(patients)} patients (> {max_patients})")
        for patient_id in patients:
            self.request("DELETE", f"/patients/{patient_id}")
        remaining = self.instances()
        if remaining:
            raise RuntimeError(f"Orthanc still holds {len(remaining)} instances after clear()")


def orthanc_dicom_tls(certificate: Path, private_key: Path, trusted: Path) -> dict[str, Any]:
    """`OrthancServer(extra_config=...)` for DICOM TLS (Orthanc ≥ 1.9.0, which 1.10 is).

    Orthanc's DICOM port then speaks TLS only and requires a client certificate that chains to
    `trusted` (`DicomTlsRemoteCertificateRequired`, the default since 1.9.3). Modalities it
    calls (C-MOVE targets) need `"UseDicomTls": true` in their `DicomModalities` entry.
    """
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(certificate),
        "DicomTlsPrivateKey": str(private_key),
        "DicomTlsTrustedCertificates": str(trusted),
        "DicomTlsRemoteCertificateRequired": True,
    }


# --------------------------------------------------------------------------- DCMTK


class StoreSCP:
    """DCMTK `storescp` writing every received object into `output_dir` (one process, no fork).

    Accepts all transfer syntaxes it knows (`+xa`); files keep the transfer syntax they were
    sent in. Its log goes to `log_dir/storescp-<port>.log` (default: next to `output_dir`);
    `max_pdu` is its maximum receive PDU (`-pdu`, DCMTK default 16384).
    """

    def __init__(
        self,
        output_dir: Path,
        aet: str = "STORESCP",
        log_dir: Path | None = None,
        max_pdu: int | None = None,
        verbose: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.aet = aet
        self.port = free_port()
        self.log_path = Path(log_dir or self.output_dir.parent) / f"storescp-{self.port}.log"
        self.max_pdu = max_pdu
        self.verbose = verbose
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self, timeout: float = 15.0) -> StoreSCP:
        """Start storescp and wait until it answers C-ECHO."""
        binary = require_binary("storescp")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [binary, "+xa", "-dhl", "-aet", self.aet, "-od", str(self.output_dir)]
        if self.verbose:
            cmd.append("-v")
        if self.max_pdu:
            cmd += ["-pdu", str(self.max_pdu)]
        self._proc = subprocess.Popen(
            [*cmd, str(self.port)],
            env=peer_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

        def answers() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"storescp exited with {self._proc.returncode}:\n{self.log_text()}")
            return echoscu(LOCALHOST, self.port, self.aet, timeout=2).returncode == 0

        try:
            wait_for(answers, timeout, interval=0.1, what=f"storescp C-ECHO on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, grace=5.0)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def files(self) -> list[Path]:
        """Files received so far."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "<no log>"


def _dicom_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def storescu_propose_option(paths: Iterable[Path]) -> str | None:
    """The storescu `-x?` option that proposes the (single) compressed transfer syntax of `paths`.

    None when every file is uncompressed (storescu's default proposal). Raises ValueError for a
    mix of compressed syntaxes or one that storescu has no option for.
    """
    syntaxes = {str(pydicom.filereader.read_file_meta_info(f).TransferSyntaxUID) for f in _dicom_files(paths)}
    compressed = syntaxes - _UNCOMPRESSED
    if not compressed:
        return None
    if len(compressed) > 1:
        raise ValueError(f"several compressed transfer syntaxes {sorted(compressed)}: send them separately")
    (syntax,) = compressed
    if syntax not in STORESCU_PROPOSE_OPTION:
        raise ValueError(f"storescu has no option proposing {syntax}; pass an -xf profile in extra_args")
    return STORESCU_PROPOSE_OPTION[syntax]


def storescu(
    files_or_dirs: Path | Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    propose: str | None = "auto",
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (folders are scanned recursively) with DCMTK `storescu`; return the process.

    One association, only the presentation contexts the files need (`-R`). `propose="auto"`
    picks the option that proposes the files' compressed transfer syntax so they go on the wire
    as they are (e.g. `-xv` for JPEG 2000 lossless); storescu's default would try to decompress
    them and fail for JPEG 2000. Pass `propose=None` to use storescu's default proposal or an
    explicit option such as "-xv". The caller checks `returncode` (0 = every store succeeded;
    note that with `-nh` storescu also returns 0 when files could not be sent at all).
    """
    if isinstance(files_or_dirs, str | Path):
        paths = [Path(files_or_dirs)]
    else:
        paths = [Path(p) for p in files_or_dirs]
    option = storescu_propose_option(paths) if propose == "auto" else propose
    cmd = [require_binary("storescu"), "-R", "-aet", calling_ae, "-aec", called_ae, "-to", "10", "-ta", "10"]
    if option:
        cmd.append(option)
    if any(p.is_dir() for p in paths):
        cmd += ["+sd", "+r"]
    cmd += [*extra_args, host, str(port), *map(str, paths)]
    return subprocess.run(cmd, env=peer_env(), capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK `echoscu`; return the process (returncode 0 = peer answered).

    `extra_args` go before host and port (e.g. `+tls KEY CERT +cf CA` for DICOM TLS)."""
    seconds = str(max(1, int(timeout)))
    cmd = [
        require_binary("echoscu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-to",
        seconds,
        "-ta",
        seconds,
        *extra_args,
        host,
        str(port),
    ]
    return subprocess.run(
        cmd, env=peer_env(), capture_output=True, text=True, timeout=timeout + 5, check=False
    )


def send_raw_dataset(
    path: Path, host: str, port: int, called_ae: str, calling_ae: str = "RAWSCU", timeout: float = 30.0
) -> int:
    """C-STORE the data set of the file at `path` byte for byte; return the response status.

    The Affected SOP Class/Instance UIDs come from the *file meta* (MediaStorageSOP*UID) and the
    data set is streamed unchanged in the file's transfer syntax, so this puts on the wire what
    storescu refuses to send: e.g. a data set whose SOPClassUID/SOPInstanceUID are empty. Uses
    pynetdicom's chunked-file mode (`STORE_SEND_CHUNKED_DATASET`), switched on for this call only.
    Raises ConnectionError if the association or the exchange fails.
    """
    from pynetdicom import AE, _config

    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            raise ConnectionError(f"association with {called_ae}@{host}:{port} not established")
        try:
            status = assoc.send_c_store(Path(path))
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        ae.shutdown()
    if "Status" not in status:
        raise ConnectionError(f"no C-STORE response from {called_ae}@{host}:{port} (timeout or abort)")
    return int(status.Status)


# --------------------------------------------------------------------------- dicom3tools


def dciodvfy(path: Path, timeout: float = 60.0) -> list[str]:
    """Run `dciodvfy` (IOD conformance check) on `path`; return its lines starting with "Error".

    dciodvfy writes its findings to stderr; warnings are dropped here. An empty list means the
    object passed. Read `dciodvfy_report` for the full text.
    """
    return [line for line in dciodvfy_report(path, timeout).splitlines() if line.startswith("Error")]


def dciodvfy_report(path: Path, timeout: float = 60.0) -> str:
    """The full stdout + stderr text of `dciodvfy path`."""
    proc = subprocess.run(
        [require_binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.stdout + proc.stderr


# --------------------------------------------------------------------------- test data


def gunzip_series(src_dir: Path, dst_dir: Path) -> list[Path]:
    """Decompress every `*.dcm.gz` in `src_dir` into `dst_dir` (as `*.dcm`); return the files."""
    sources = sorted(Path(src_dir).glob("*.dcm.gz"))
    if not sources:
        raise FileNotFoundError(f"no *.dcm.gz files in {src_dir}")
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        dst = dst_dir / src.name.removesuffix(".gz")
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        written.append(dst)
    return written


def _phantom_slice(rows: int, cols: int, z_fraction: float) -> np.ndarray:
    """Hounsfield units of one axial slice of a body-like phantom (air, fat, soft tissue, bone)."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    ny, nx = (y - cy) / (rows / 2), (x - cx) / (cols / 2)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    hu[(nx / 0.85) ** 2 + (ny / 0.65) ** 2 <= 1] = -100.0  # body outline: fat
    hu[(nx / 0.75) ** 2 + (ny / 0.55) ** 2 <= 1] = 40.0  # soft tissue
    organ_r = 0.15 + 0.1 * np.sin(np.pi * z_fraction)  # an "organ" growing and shrinking along z
    hu[((nx - 0.3) / organ_r) ** 2 + ((ny + 0.1) / organ_r) ** 2 <= 1] = 60.0
    hu[(nx**2 + (ny - 0.4) ** 2) <= 0.08**2] = 700.0  # spine
    return hu


def make_synthetic_ct_series(
    dst_dir: Path, n: int = 300, rows: int = 512, cols: int = 512, seed: int = 0
) -> list[Path]:
    """Write a valid CT Image Storage series of `n` axial slices (Explicit VR Little Endian).

    One patient, study, series and frame of reference (fresh UIDs); 0.7 mm pixels, 1 mm slices
    along +z; int16 stored values with RescaleSlope 1 / RescaleIntercept -1024 (values are HU +
    1024) of a phantom with noise. Returns the files in slice order.
    """
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    spacing, thickness = 0.7, 1.0
    origin_x, origin_y = -(cols - 1) * spacing / 2, -(rows - 1) * spacing / 2
    files = []
    for index in range(n):
        hu = _phantom_slice(rows, cols, index / max(n - 1, 1))
        hu += rng.normal(0.0, 10.0, size=hu.shape).astype(np.float32)
        stored = np.clip(np.rint(hu + 1024.0), -2048, 4095).astype(np.int16)
        sop_uid = generate_uid()
        z = index * thickness

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = "SYNTH0001"
        ds.Modality = "CT"
        ds.Manufacturer = "radloop synthetic"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = "Synthetic CT phantom"
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYNTH-CT"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.KVP = "120"
        ds.SliceThickness = f"{thickness:g}"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [f"{origin_x:g}", f"{origin_y:g}", f"{z:g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = stored.tobytes()

        path = dst_dir / f"CT{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
