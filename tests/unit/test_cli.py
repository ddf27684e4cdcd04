"""The radloop command: every command has --help, list commands --json, errors are one clean line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radloop.cli import app, main
from radloop.core.errors import ConfigError

runner = CliRunner()
COMMANDS = [
    [],
    ["serve"],
    ["send"],
    ["studies", "list"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "retry"],
    ["jobs", "cancel"],
    ["pipelines", "list"],
    ["pipelines", "validate"],
    ["deliveries", "list"],
    ["deliveries", "retry"],
    ["deliveries", "dismiss"],
    ["config", "show"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "radloop")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_list_commands_print_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0  # read-only commands never migrate
    for command in (["studies", "list"], ["jobs", "list"], ["deliveries", "list"], ["pipelines", "list"]):
        result = runner.invoke(app, [*command, "--json"])
        assert result.exit_code == 0, result.output
        assert isinstance(json.loads(result.output), list)


@pytest.mark.parametrize("command", [["studies", "list"], ["jobs", "list"], ["tokens", "list"]])
def test_read_only_commands_never_create_or_migrate_the_database(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["radloop", *command])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "run `radloop db upgrade` or `radloop serve` first" in err and "Traceback" not in err
    assert not (tmp_path / "radloop.db").exists()


def test_read_only_commands_refuse_a_schema_behind_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    with sqlite3.connect(tmp_path / "radloop.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
    result = runner.invoke(app, ["jobs", "list"])
    assert isinstance(result.exception, ConfigError)
    assert "has schema 0002, not" in str(result.exception) and "radloop db upgrade" in str(result.exception)


def test_config_show_masks_the_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADLOOP_SECRET_KEY", "do-not-print-me")
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    assert "do-not-print-me" not in result.output and "secret_key: '***'" in result.output


def test_errors_become_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: '1'\noperators:\n  - id: a\n    use: nope\n")
    monkeypatch.setattr("sys.argv", ["radloop", "pipelines", "validate", str(bad)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "bad.yaml:5: operators[0].use: unknown operator 'nope'" in err
    assert "Traceback" not in err
