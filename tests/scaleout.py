"""Several "hosts" on one machine for the scale-out tests: network namespaces on a bridge, a private
RabbitMQ node on the bridge address, PostgreSQL reached through the bridge, and radloop roles each
in its own namespace.

Layout (one per test module): a bridge ``rlb<tag>`` with 10.<a>.<b>.1/24 in the root namespace;
each role gets a namespace ``rl<tag><name>`` with a veth on the bridge and an address of its own.
Inside a namespace 127.0.0.1 is that namespace's own, so every peer is reached by the bridge
address: the private RabbitMQ node listens there, the machine's PostgreSQL (which listens on
127.0.0.1 only) is reached through a ``socat`` forward on the bridge address, and Orthanc's DICOM
port listens on every address already. The roles share only the data folder.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

import peers

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


class Hosts:
    """A bridge and network namespaces on it (as root); :meth:`close` removes everything."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("the scale-out tests make network namespaces: run them as root", pytrace=False)
        peers.require_binary("ip")
        peers.require_binary("socat")
        self.tag = uuid.uuid4().hex[:4]
        a, b = random.randint(64, 127), random.randint(1, 254)
        self.prefix = f"10.{a}.{b}"
        self.bridge = f"rlb{self.tag}"
        self.ip = f"{self.prefix}.1"
        self.namespaces: dict[str, str] = {}
        self._forwards: list[subprocess.Popen[bytes]] = []
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add(self, name: str) -> str:
        """A namespace for ``name`` on the bridge; returns its address."""
        index = len(self.namespaces) + 2
        ns, veth, peer = f"rl{self.tag}{name}", f"rv{self.tag}{index}", f"rp{self.tag}{index}"
        address = f"{self.prefix}.{index}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", veth, "master", self.bridge)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "link", "set", peer, "netns", ns)
        _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", peer)
        _run("ip", "-n", ns, "link", "set", peer, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        self.namespaces[name] = ns
        return address

    def forward(self, target_port: int) -> int:
        """A TCP forward from the bridge address to 127.0.0.1:``target_port``; returns its port."""
        port = peers.free_port()
        proc = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={self.ip},reuseaddr,fork", f"TCP:127.0.0.1:{target_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._forwards.append(proc)
        peers.wait_for(lambda: _listening(self.ip, port), 10, what=f"socat on {self.ip}:{port}")
        return port

    def close(self) -> None:
        for proc in self._forwards:
            proc.terminate()
            proc.wait(timeout=10)
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class PrivateRabbit:
    """A RabbitMQ node of its own, listening on ``host``: it can be stopped and restarted (the
    machine's shared node is never touched) and given a short ``consumer_timeout``."""

    def __init__(self, workdir: Path, host: str, consumer_timeout_ms: int | None = None) -> None:
        if not RABBIT_SERVER.is_file():
            pytest.fail(
                f"RabbitMQ is required ({RABBIT_SERVER}; apt-get install rabbitmq-server)", pytrace=False
            )
        self.workdir = workdir
        self.host = host
        self.port = peers.free_port()
        self.dist_port = peers.free_port()
        self.node = f"rl{uuid.uuid4().hex[:8]}@localhost"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = [f"listeners.tcp.default = {host}:{self.port}", "loopback_users = none"]
        if consumer_timeout_ms is not None:
            conf.append(f"consumer_timeout = {consumer_timeout_ms}")
        (workdir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (workdir / "enabled_plugins").write_text("[].\n")
        # consumer timeouts are checked on the channel tick (60 s by default): every second here
        (workdir / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 1000}]}].\n")
        self.log_path = workdir / "rabbit.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def start(self, timeout: float = 120.0) -> PrivateRabbit:
        w = self.workdir
        env = {
            **peers.peer_env(),
            "HOME": str(w),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(RABBIT_SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        peers.wait_for(
            self._ready, timeout, interval=0.25, what=f"RabbitMQ node {self.node} (log {self.log_path})"
        )
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"RabbitMQ exited with {self._proc.returncode}: {self.log_path.read_text()[-3000:]}"
            )
        return _listening(self.host, self.port)

    def log_text(self) -> str:
        """The node's own log (connections, consumer timeouts)."""
        return "".join(p.read_text(errors="replace") for p in (self.workdir / "log").glob("*.log"))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._proc = None


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (unique name: xdist workers never share one)."""
    name = f"radloop_scale_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL on 127.0.0.1:5432 is required (user postgres, trust auth): {e}", pytrace=False
        )
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Role:
    """One radloop role as its own process in namespace ``ns`` (``ip netns exec``), logging to a file."""

    def __init__(
        self, hosts: Hosts, host: str, role: str, config: dict[str, Any], workdir: Path, *args: str
    ) -> None:
        self.hosts, self.host, self.role = hosts, host, role
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{host}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{host}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        if self.role == "worker":
            return [sys.executable, "-m", "radloop.cli", "worker", "-c", str(self.config_path), *self.args]
        return [
            sys.executable,
            "-m",
            "radloop.cli",
            "serve",
            "--role",
            self.role,
            "-c",
            str(self.config_path),
        ]

    def start(self, timeout: float = 180.0, wait: bool = True) -> Role:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        ns = self.hosts.namespaces[self.host]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *self.command()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        if wait:
            peers.wait_for(
                self._ready, timeout, interval=0.3, what=f"{self.host} ready (log {self.log_path})"
            )
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.host} exited with {self.proc.returncode}:\n{self.log_text()[-5000:]}")
        return f"radloop ready (role {self.role})" in self.log_text()[self._offset :]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """``kill -9`` the role's process and everything it started (its pool processes)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``radloop`` command in the root namespace against a role's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
    return subprocess.run(
        [sys.executable, "-m", "radloop.cli", *args, "-c", str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """:func:`peers.wait_for` with a 0.5 s interval."""
    return peers.wait_for(predicate, timeout, interval=0.5, what=what)


__all__ = ["Hosts", "PrivateRabbit", "Role", "cli", "postgres_database", "time", "wait_until"]
