"""Settings: one object from file + environment, validated, unsafe defaults refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from radloop.core.errors import ConfigError
from radloop.core.settings import load_settings


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "radloop.yaml"
    cfg.write_text("dicom:\n  port: 4000\nworkers:\n  processes: 2\n")
    monkeypatch.setenv("RADLOOP_DICOM__PORT", "5000")
    s = load_settings(cfg)
    assert s.dicom.port == 5000 and s.workers.processes == 2


def test_invalid_settings_name_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "radloop.yaml"
    cfg.write_text("dicom:\n  listeners:\n    - ae_title: THIS_TITLE_IS_FAR_TOO_LONG\n")
    with pytest.raises(ConfigError, match=r"radloop.yaml: dicom.listeners.0.ae_title"):
        load_settings(cfg)
    cfg.write_text("destinations:\n  - {kind: ftp, name: x}\n")
    with pytest.raises(ConfigError, match="destinations.0"):
        load_settings(cfg)


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ConfigError, match="secret_key must be set"):
        load_settings(environment="production")
    assert load_settings(environment="production", secret_key="s3cret-from-vault").environment == "production"


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=str(tmp_path))
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/radloop.db"


def test_pipeline_destinations_are_merged() -> None:
    s = load_settings(pipelines={"destinations": {"brain-extraction": ["pacs"], "*": ["archive"]}})
    assert s.pipelines.destinations_for("brain-extraction", ["pacs"]) == ["pacs", "archive"]
    assert s.pipelines.destinations_for("other", []) == ["archive"]
