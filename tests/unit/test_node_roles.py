"""Roles: SQLite refused where other hosts would need the database; ``radloop health`` exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from radloop.core import db
from radloop.core.errors import ConfigError
from radloop.core.settings import load_settings
from radloop.node_roles import ROLES, Heartbeat, check_role, parse_role


def _radloop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLOOP_")}
    cmd = [sys.executable, "-m", "radloop.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False)


@pytest.mark.parametrize("role", [r for r in ROLES if r != "all"])
def test_a_role_refuses_sqlite(role: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="set database.url to PostgreSQL"):
        check_role(settings, parse_role(role))


def test_all_on_sqlite_is_fine_but_not_with_celery(tmp_path: Path) -> None:
    check_role(load_settings(data_dir=str(tmp_path)), "all")
    with pytest.raises(ConfigError, match="celery"):
        check_role(load_settings(data_dir=str(tmp_path), workers={"executor": "celery"}), "all")
    with pytest.raises(ConfigError, match="unknown role 'bogus'"):
        parse_role("bogus")


def test_cli_worker_and_serve_role_on_sqlite_fail_clearly(tmp_path: Path) -> None:
    for args in (["worker"], ["serve", "--role", "ingest"]):
        done = _radloop(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "SQLite is a file on one host: set database.url to PostgreSQL" in done.stderr
    assert not (tmp_path / "radloop-data").exists()  # refused before anything was created


def test_health_exit_code_follows_the_heartbeat(tmp_path: Path) -> None:
    config = tmp_path / "radloop.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    settings = load_settings(config)
    db.upgrade(settings)
    done = _radloop("health", "--role", "outbox", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert "ok   database" in done.stdout and "FAIL heartbeat" in done.stdout
    Heartbeat(settings, "outbox").beat()
    done = _radloop("health", "--role", "outbox", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout
