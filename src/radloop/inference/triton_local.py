"""A local, CPU-only Triton Inference Server for development and CI (``radloop triton serve``).

The ``nvidia-pytriton`` wheel on PyPI bundles a ``tritonserver`` binary (2.51) with the python
backend only. It runs from its own virtual environment, because the python backend's stub
process needs ``numpy<2`` (with numpy 2 it fails with "output tensor shape does not match size
of output") and the networks it wraps need torch (CPU build) and onnxruntime there.

Recipe (see DESIGN.md): copy the python backend (``libtriton_python.so``,
``triton_python_backend_utils.py``) and the stub for the environment's Python into a backends
folder; put the environment's ``bin`` first on ``PATH`` (the stub finds its Python there);
``LD_LIBRARY_PATH`` = that Python's ``LIBDIR`` plus the wheel's ``nvidia_pytriton.libs``
(without it: "'_thread.RLock' object has no attribute '_recursion_count'"); bind every
endpoint to 127.0.0.1 explicitly (the server binds 0.0.0.0 otherwise). Every wait is bounded.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from radloop.core.errors import RadloopError

logger = logging.getLogger(__name__)

DEFAULT_VENV = Path.home() / ".cache" / "radloop" / "triton-venv"
LOCALHOST = "127.0.0.1"
PIP_TIMEOUT_S = 1800.0
STAMP = ".radloop-triton.json"


class LocalTritonError(RadloopError):
    """The local Triton server could not be installed, started, or did not become ready."""


def venv_requirements() -> list[str]:
    """What the server's environment needs: the server wheel, numpy<2, onnxruntime, CPU torch.

    torch is pinned to the version of this environment (a CPU build here stays a CPU build).
    """
    try:
        torch = "torch==" + importlib.metadata.version("torch").split("+", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        torch = "torch"
    return ["nvidia-pytriton", "numpy<2", "onnxruntime", torch]


def ensure_venv(
    venv: Path = DEFAULT_VENV, pip_args: Sequence[str] = (), timeout_s: float = PIP_TIMEOUT_S
) -> Path:
    """Create the server's virtual environment unless it is already there with the same packages.

    A lock file makes concurrent callers (two test sessions) wait for one build.
    """
    requirements = venv_requirements()
    wanted = {"requirements": requirements, "pip_args": list(pip_args)}
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_stamp(venv) == wanted and _python(venv).is_file():
            return venv
        start = time.monotonic()
        logger.info("building the Triton environment %s: %s", venv, " ".join(requirements))
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], timeout_s, "create the virtual environment")
        _run(
            [
                str(_python(venv)),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *requirements,
                *pip_args,
            ],
            timeout_s,
            "install " + " ".join(requirements),
        )
        (venv / STAMP).write_text(json.dumps(wanted))
        logger.info("Triton environment ready in %.0f s", time.monotonic() - start)
    return venv


@dataclass(frozen=True)
class ServerLayout:
    """Where the parts of the server are in its environment."""

    binary: Path
    python_backend: Path
    stub: Path
    library_path: str
    bin_dir: Path


def server_layout(venv: Path) -> ServerLayout:
    """Locate the binary, the python backend and stub, and the library path of ``venv``."""
    code = (
        "import json, site, sys, sysconfig; print(json.dumps([site.getsitepackages()[0], "
        "sysconfig.get_config_var('LIBDIR'), f'{sys.version_info[0]}.{sys.version_info[1]}']))"
    )
    out = _run([str(_python(venv)), "-c", code], 60.0, "inspect the Triton environment")
    site_packages, libdir, version = json.loads(out)
    server = Path(site_packages) / "pytriton" / "tritonserver"
    layout = ServerLayout(
        binary=server / "bin" / "tritonserver",
        python_backend=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        library_path=os.pathsep.join([libdir, str(Path(site_packages) / "nvidia_pytriton.libs")]),
        bin_dir=_python(venv).parent,
    )
    for path in (layout.binary, layout.python_backend, layout.stub):
        if not path.exists():
            raise LocalTritonError(f"{path} is missing: is nvidia-pytriton installed in {venv}?")
    return layout


class LocalTriton:
    """``tritonserver`` on 127.0.0.1 serving ``repo``; ports 0 = free ports chosen now.

    Use as a context manager, or ``start()`` / ``stop()``. The server's output goes to
    ``<workdir>/tritonserver.log``.
    """

    def __init__(
        self,
        repo: Path,
        venv: Path,
        workdir: Path,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
    ) -> None:
        self.repo, self.venv, self.workdir = Path(repo), Path(venv), Path(workdir)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>`` (REST)."""
        return f"http://{LOCALHOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``grpc://127.0.0.1:<port>``."""
        return f"grpc://{LOCALHOST}:{self.grpc_port}"

    def start(self, ready_timeout_s: float = 180.0) -> LocalTriton:
        """Start the server and wait until it reports ready (all models loaded)."""
        layout = server_layout(self.venv)
        backends = self._backends_dir(layout)
        env = {
            **os.environ,
            "PATH": f"{layout.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "LD_LIBRARY_PATH": layout.library_path,
        }
        command = [
            str(layout.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-address={LOCALHOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOCALHOST}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOCALHOST}",
            f"--metrics-port={self.metrics_port}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-timeout-secs=5",
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        logger.info("tritonserver pid %d: HTTP %s, gRPC %s", self.proc.pid, self.http_url, self.grpc_url)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _backends_dir(self, layout: ServerLayout) -> Path:
        target = self.workdir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copyfile(layout.python_backend / name, target / name)
        shutil.copyfile(layout.stub, target / layout.stub.name)
        (target / layout.stub.name).chmod(0o755)
        return target.parent

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LocalTritonError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise LocalTritonError(f"tritonserver not ready after {timeout_s:g} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """True when ``GET /v2/health/ready`` answers 200 (the server and all its models are ready)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server (its process group), then SIGKILL after ``grace_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> LocalTriton:
        return self.start() if self.proc is None else self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_stamp(venv: Path) -> object:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _run(command: list[str], timeout_s: float, what: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise LocalTritonError(f"could not {what} within {timeout_s:g} s") from e
    if done.returncode != 0:
        raise LocalTritonError(
            f"could not {what} (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return done.stdout
