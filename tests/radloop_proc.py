"""Run a real ``radloop serve`` process for integration tests (so it can be killed with -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import Engine

import peers
from radloop.core.db import make_engine
from radloop.core.settings import Settings, load_settings


class RadloopServer:
    """``radloop serve -c <tmp>/radloop.yaml`` on a free port; logs in ``<tmp>/serve.log``."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = peers.free_port()
        self.api_port = peers.free_port()
        base: dict[str, Any] = {
            "data_dir": str(workdir / "data"),
            # one listener process unless a test asks for more (the default is one per core)
            "dicom": {"host": "127.0.0.1", "port": self.port, "min_free_bytes": 0, "listener_processes": 1},
            "api": {"host": "127.0.0.1", "port": self.api_port},
            "workers": {"processes": 1, "poll_interval_s": 0.2, "retry_base_s": 1.0},
            "outbox": {"poll_interval_s": 0.5, "retry_base_s": 1.0, "retry_cap_s": 5.0},
        }
        merged = _merge(base, config)
        merged["dicom"]["port"] = self.port
        merged["api"]["port"] = self.api_port
        self.config_path = workdir / "radloop.yaml"
        self.config_path.write_text(yaml.safe_dump(merged))
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._engine: Engine | None = None
        self._log_offset = 0

    @property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings)
        return self._engine

    def start(self, timeout: float = 60.0) -> RadloopServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radloop.cli", "serve", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        peers.wait_for(
            self._ready, timeout, interval=0.2, what=f"radloop on port {self.port} (log: {self.log_path})"
        )
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"radloop serve exited with {self.proc.returncode}:\n{self.log_text()}")
        return "radloop ready" in self.log_text()[self._log_offset :]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    @property
    def api_url(self) -> str:
        """Root URL of the HTTP API (REST under /api/v1, DICOMweb under /dicomweb)."""
        return f"http://127.0.0.1:{self.api_port}"

    def create_token(self, name: str = "tests", role: str = "admin") -> str:
        """An API token made with ``radloop tokens create --role ROLE`` (the CLI prints it on its
        last line); tests that are not about roles use ``admin``."""
        done = self.cli("tokens", "create", name, "--role", role)
        if done.returncode != 0:
            raise RuntimeError(f"radloop tokens create failed: {done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, with_config: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``radloop`` CLI command (against this server's config unless ``with_config`` is False)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
        config = ["-c", str(self.config_path)] if with_config else []
        return subprocess.run(
            [sys.executable, "-m", "radloop.cli", *args, *config],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def __enter__(self) -> RadloopServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that never got ready (a start timeout) must not outlive the test
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
