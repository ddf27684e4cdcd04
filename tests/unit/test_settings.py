"""Settings: one object from file + environment, validated, unsafe defaults refused."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from radloop.core.errors import ConfigError
from radloop.core.settings import (
    DEV_SECRET,
    AutoBackendSettings,
    DicomwebDestination,
    DicomwebSource,
    ModelBackendSettings,
    OnnxRuntimeBackendSettings,
    Settings,
    TorchScriptBackendSettings,
    TritonBackendSettings,
    XnatDestination,
    load_settings,
)
from radloop.inference.registry import BACKENDS


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
    strong = "kqf-cqvFWfw9ew7J3WkVlrK3SIDVRT6OPQW8ZFPL9jY"  # secrets.token_urlsafe(32)
    assert load_settings(environment="production", secret_key=strong).environment == "production"


# --- issue 16: weak keys, secrets in `config show` ---------------------------------------------

_STRONG = "kqf-cqvFWfw9ew7J3WkVlrK3SIDVRT6OPQW8ZFPL9jY"


@pytest.mark.parametrize(
    ("overrides", "field", "why"),
    [
        ({"secret_key": ""}, "secret_key", "empty"),
        ({"secret_key": "x"}, "secret_key", "shorter than 32"),
        ({"secret_key": "s3cret-from-vault"}, "secret_key", "shorter than 32"),
        ({"secret_key": "ab" * 20}, "secret_key", "low-entropy"),
        ({"review": {"launch_key": "launch" * 6}}, "review.launch_key", "low-entropy"),
        ({"review": {"launch_key": DEV_SECRET}}, "review.launch_key", "development default"),
        ({"training_export": {"pseudonym_key": ""}}, None, None),  # empty optional key: falls back
        ({"training_export": {"pseudonym_key": "p" * 40}}, "training_export.pseudonym_key", "low-entropy"),
    ],
)
def test_production_refuses_every_weak_key(
    overrides: dict[str, object], field: str | None, why: str | None
) -> None:
    settings: dict[str, object] = {"secret_key": _STRONG, **overrides}
    if field is None:
        assert load_settings(environment="production", **settings).environment == "production"
        return
    with pytest.raises(ConfigError, match=rf"{field} is too weak for production: .*{why}"):
        load_settings(environment="production", **settings)
    load_settings(environment="development", **{k: v for k, v in settings.items() if k != "review"})


def test_strong_random_keys_pass_in_production() -> None:
    import secrets

    for _ in range(20):
        s = load_settings(
            environment="production",
            secret_key=secrets.token_urlsafe(32),
            review={"launch_key": secrets.token_hex(32)},
            training_export={"pseudonym_key": secrets.token_urlsafe(32)},
        )
        assert s.environment == "production"


def test_config_show_masks_every_secret_by_type(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from radloop.cli import app

    cfg = tmp_path / "radloop.yaml"
    cfg.write_text(
        "secret_key: SECRET-KEY-VALUE-0123456789-abcdefghijkl\n"
        "database: {url: 'postgresql://radloop:DB-PASSWORD@db.example:5432/radloop'}\n"
        "review: {launch_key: LAUNCH-KEY-VALUE-0123456789-abcdefghijk}\n"
        "sources:\n"
        "  - {kind: dicomweb, name: pacs, url: 'https://svc:URL-PASSWORD@pacs/dicom-web',\n"
        "     listener_ae_title: RADLOOP,\n"
        "     headers: {Authorization: 'Bearer HEADER-TOKEN', X-Custom: CUSTOM-SECRET}}\n"
        "destinations:\n"
        "  - {kind: dicomweb, name: arch, url: 'http://u:DEST-URL-PASSWORD@arch/dw',\n"
        "     auth: bearer, token: DEST-TOKEN}\n"
    )
    done = CliRunner().invoke(app, ["config", "show", "--config", str(cfg)])
    assert done.exit_code == 0, done.output
    for secret in (
        "SECRET-KEY",
        "DB-PASSWORD",
        "LAUNCH-KEY",
        "URL-PASSWORD",
        "HEADER-TOKEN",
        "CUSTOM-SECRET",
        "DEST-URL-PASSWORD",
        "DEST-TOKEN",
    ):
        assert secret not in done.output, secret
    assert "postgresql://radloop:***@db.example:5432/radloop" in done.output
    assert "Authorization: '***'" in done.output and "X-Custom: '***'" in done.output


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=str(tmp_path))
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/radloop.db"


def test_pipeline_destinations_are_merged() -> None:
    s = load_settings(pipelines={"destinations": {"brain-extraction": ["pacs"], "*": ["archive"]}})
    assert s.pipelines.destinations_for("brain-extraction", ["pacs"]) == ["pacs", "archive"]
    assert s.pipelines.destinations_for("other", []) == ["archive"]


# --- one loading path: pydantic-settings sources ------------------------------------------------


def test_arguments_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "radloop.yaml"
    cfg.write_text("log_level: DEBUG\ndicom:\n  port: 4000\n  host: 0.0.0.0\napi:\n  port: 9000\n")
    monkeypatch.setenv("RADLOOP_CONFIG", str(cfg))
    monkeypatch.setenv("RADLOOP_DICOM__PORT", "5000")
    monkeypatch.setenv("RADLOOP_API__PORT", "9001")
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path / "from-env"))
    s = load_settings(None, api={"port": 9002})
    assert (s.log_level, s.dicom.host, s.dicom.port, s.api.port) == ("DEBUG", "0.0.0.0", 5000, 9002)
    assert s.data_dir == tmp_path / "from-env"


def test_environment_reaches_nested_secrets_and_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLOOP_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("RADLOOP_REVIEW__LAUNCH_KEY", "l" * 40)
    monkeypatch.setenv("RADLOOP_TRAINING_EXPORT__PSEUDONYM_KEY", "pseudonym-key")
    monkeypatch.setenv("RADLOOP_DESTINATIONS", '[{"kind": "folder", "name": "share", "path": "/tmp/share"}]')
    s = load_settings(None)
    assert s.secret_key.get_secret_value() == "k" * 40
    assert s.review.launch_key.get_secret_value() == "l" * 40
    assert s.training_export.pseudonym_key is not None
    assert s.training_export.pseudonym_key.get_secret_value() == "pseudonym-key"
    assert [d.name for d in s.destinations] == ["share"]
    monkeypatch.setenv("RADLOOP_DESTINATIONS", "[not json")
    with pytest.raises(ConfigError, match="destinations"):
        load_settings(None)


def test_unreadable_config_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dicom: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_settings(bad)
    bad.write_text("")
    assert load_settings(bad).dicom.port == 11112


# --- secrets ------------------------------------------------------------------------------------

_SECRETS = {
    "secret_key": "server-secret-" + "s" * 30,
    "review": {"launch_key": "launch-key-" + "l" * 30},
    "training_export": {"pseudonym_key": "pseudonym-key-value"},
    "destinations": [
        {"kind": "dicomweb", "name": "web", "url": "http://pacs/dicom-web", "auth": "basic",
         "username": "u", "password": "stow-password-value"},
        {"kind": "dicomweb", "name": "cloud", "url": "https://cloud/dicom-web", "auth": "bearer",
         "token": "stow-token-value"},
        {"kind": "xnat", "name": "xnat", "url": "https://xnat.example.org", "project": "P",
         "user": "u", "password": "xnat-password-value"},
    ],
    "sources": [
        {"kind": "dicomweb", "name": "pacs", "url": "http://pacs/dicom-web", "listener_ae_title": "RADLOOP",
         "headers": {"Authorization": "Bearer source-header-value"}},
    ],
}  # fmt: skip
_SECRET_VALUES = [
    "server-secret-",
    "launch-key-",
    "pseudonym-key-value",
    "stow-password-value",
    "stow-token-value",
    "xnat-password-value",
    "source-header-value",
]


def test_secrets_are_masked_when_shown() -> None:
    s = load_settings(None, **_SECRETS)
    shown = [repr(s), s.model_dump_json(), str(s.model_dump(mode="json"))]
    for text in shown:
        assert not [v for v in _SECRET_VALUES if v in text], text
    assert s.model_dump(mode="json")["review"]["launch_key"] == "**********"


def test_worker_json_keeps_every_secret() -> None:
    s = load_settings(None, **_SECRETS)
    worker = Settings.from_worker_json(s.to_worker_json())
    assert worker == s
    assert worker.secret_key.get_secret_value() == _SECRETS["secret_key"]
    assert worker.review.launch_key.get_secret_value().startswith("launch-key-")
    web, cloud, xnat = worker.destinations
    assert isinstance(web, DicomwebDestination) and web.secret() == "stow-password-value"
    assert isinstance(cloud, DicomwebDestination) and cloud.secret() == "stow-token-value"
    assert isinstance(xnat, XnatDestination) and xnat.password is not None
    assert xnat.password.get_secret_value() == "xnat-password-value"
    source = worker.sources[0]
    assert isinstance(source, DicomwebSource)
    assert source.header_values() == {"Authorization": "Bearer source-header-value"}


def test_a_spawned_worker_process_gets_the_real_secrets() -> None:
    """What the local executor does: a spawned process rebuilds the settings from the JSON."""
    s = load_settings(None, **_SECRETS)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        in_worker = pool.submit(Settings.from_worker_json, s.to_worker_json()).result(timeout=120)
    assert in_worker == s and in_worker.secret_key.get_secret_value() == _SECRETS["secret_key"]


def test_production_refuses_the_default_secret_from_the_worker_json_too() -> None:
    masked = load_settings(None, environment="production", secret_key=DEV_SECRET + "x").model_dump_json()
    # the masked key ("**********") is itself too weak: masked settings can never start in production
    with pytest.raises(ValidationError, match="secret_key is too weak"):
        Settings.from_worker_json(masked)
    with pytest.raises(ValidationError, match="secret_key must be set"):
        Settings.from_worker_json(
            load_settings(None, secret_key=DEV_SECRET)
            .model_copy(update={"environment": "production"})
            .to_worker_json()
        )


# --- model backends: a discriminated union on ``backend`` ---------------------------------------


def test_readme_inference_example_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "radloop.yaml"
    cfg.write_text(
        "inference:\n"
        "  default: {backend: auto}\n"
        "  models:\n"
        "    deepbet_mask: {backend: triton, url: grpc://127.0.0.1:8001, timeout_s: 120, retries: 3}\n"
        "    deepbet_bbox: {backend: triton, url: http://127.0.0.1:8000}\n"
        "    ct_organs: {backend: torchscript, device: cuda}\n"
        "    cxr: {backend: onnxruntime}\n"
        "    plain: {device: cpu}\n"
    )
    inference = load_settings(cfg).inference
    mask = inference.backend_for("deepbet_mask")
    assert isinstance(mask, TritonBackendSettings) and (mask.url, mask.retries) == (
        "grpc://127.0.0.1:8001",
        3,
    )
    assert isinstance(inference.backend_for("ct_organs"), TorchScriptBackendSettings)
    assert isinstance(inference.backend_for("cxr"), OnnxRuntimeBackendSettings)
    assert isinstance(inference.backend_for("plain"), AutoBackendSettings)
    assert isinstance(inference.backend_for("anything else"), AutoBackendSettings)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"backend": "auto", "url": "grpc://127.0.0.1:8001"}, r"models.m.auto.url: Extra inputs"),
        ({"backend": "onnxruntime", "retries": 2}, r"models.m.onnxruntime.retries: Extra inputs"),
        ({"backend": "triton"}, r"models.m.triton.url: Field required"),
        ({"backend": "tensorrt"}, r"models.m: Input tag 'tensorrt'"),
    ],
)
def test_backend_fields_belong_to_their_backend(model: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, inference={"models": {"m": model}})


def test_every_backend_settings_type_has_a_builder() -> None:
    variants = {get_args(member)[0] for member in get_args(get_args(ModelBackendSettings)[0])}
    assert variants == set(BACKENDS)
