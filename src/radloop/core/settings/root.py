"""One typed ``Settings`` object, built once at start, validated, and passed in.

Sources, highest precedence first, all read by pydantic-settings: arguments given to
:func:`load_settings`, ``RADLOOP_*`` environment variables (nested fields with ``__``, e.g.
``RADLOOP_DICOM__PORT=11112``; lists and mappings as JSON), then the YAML config file
(``--config`` or ``RADLOOP_CONFIG``), then the defaults. Nothing here is read at import time.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from radloop.core.errors import ConfigError
from radloop.core.settings.api import ApiSettings
from radloop.core.settings.audit import AuditSettings
from radloop.core.settings.common import REVEAL_SECRETS, Key, StrictModel, iter_keys, key_weakness
from radloop.core.settings.destinations import Destination, DestinationSettings, OutboxSettings
from radloop.core.settings.dicom import DicomSettings, ListenerSettings
from radloop.core.settings.export import TrainingExportSettings
from radloop.core.settings.inference import InferenceSettings
from radloop.core.settings.oidc import OidcSettings
from radloop.core.settings.pipelines import PipelineSettings, WorkerSettings
from radloop.core.settings.review import ReviewSettings
from radloop.core.settings.sources import PullSource
from radloop.core.settings.xnat import XnatSettings

DEV_SECRET = "radloop-development-secret-change-me"

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("radloop_config_file", default=None)
"""The YAML file :func:`load_settings` is reading, for :meth:`Settings.settings_customise_sources`."""


class DatabaseSettings(StrictModel):
    """Where the index and job state live. Empty ``url`` = SQLite in ``data_dir``."""

    url: str = ""
    echo: bool = False


class _ConfigFileSource(YamlConfigSettingsSource):
    """The YAML config file; an unreadable file or one without a mapping is a :class:`ConfigError`."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            loaded = super()._read_file(file_path)
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {file_path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping at top level")
        return loaded


class Settings(BaseSettings):
    """All of radloop's configuration; see the README's "Configuration" section."""

    model_config = SettingsConfigDict(env_prefix="RADLOOP_", env_nested_delimiter="__", extra="forbid")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("radloop-data")
    secret_key: Key = SecretStr(DEV_SECRET)
    data_dir_group_access: bool = Field(
        False,
        description="Files radloop creates under data_dir are owner-only (0600, folders 0700); "
        "true = the owner's group may read and write them too (0660 / 0770).",
    )
    log_level: str = "INFO"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    pipelines: PipelineSettings = Field(default_factory=PipelineSettings)
    destinations: list[Destination] = Field(default_factory=list)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sources: list[PullSource] = Field(default_factory=list, description="PACS radloop pulls studies from.")
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    xnat: XnatSettings = Field(default_factory=XnatSettings)
    training_export: TrainingExportSettings = Field(default_factory=TrainingExportSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``RADLOOP_*`` variables, then the config file :func:`load_settings` reads."""
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, yaml_file=path))

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.environment == "production":
            self._check_keys()
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique, got {names}")
        self._check_sources()
        return self

    def _check_keys(self) -> None:
        """Production refuses a weak key: every :data:`~radloop.core.settings.common.Key` field."""
        if self.secret_key.get_secret_value() == DEV_SECRET:
            raise ValueError("secret_key must be set (RADLOOP_SECRET_KEY) when environment is production")
        for path, value in iter_keys(self):
            if value is None or (path != "secret_key" and not value.get_secret_value()):
                continue  # an optional key left empty falls back to secret_key, checked here too
            weakness = key_weakness(value.get_secret_value(), DEV_SECRET)
            if weakness is not None:
                raise ValueError(
                    f"{path} is too weak for production: {weakness}; make one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )

    def _check_sources(self) -> None:
        names = [src.name for src in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        titles = {lst.ae_title for lst in self.dicom.listeners}
        for src in self.sources:
            if src.listener_ae_title not in titles:
                raise ValueError(
                    f"source {src.name!r}: listener_ae_title {src.listener_ae_title!r} is not one of "
                    f"dicom.listeners ({sorted(titles)})"
                )
        if self.api.default_ae_title and self.api.default_ae_title not in titles:
            raise ValueError(f"api.default_ae_title {self.api.default_ae_title!r} is not a dicom listener")

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; SQLite in ``data_dir`` unless ``database.url`` is set."""
        return self.database.url or f"sqlite:///{(self.data_dir / 'radloop.db').resolve()}"

    def destination(self, name: str) -> DestinationSettings:
        """The destination called ``name``; :class:`ConfigError` if none is configured."""
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigError(
            f"no destination named {name!r} in settings (have: {[d.name for d in self.destinations]})"
        )

    def listener(self, ae_title: str) -> ListenerSettings | None:
        """The listener for a called AE title, or None."""
        for lst in self.dicom.listeners:
            if lst.ae_title == ae_title.strip():
                return lst
        return None

    def to_worker_json(self) -> str:
        """These settings as JSON *with the secrets' real values*, for a worker process started by
        this one (read back with :meth:`from_worker_json`). Never log or store it: a plain
        ``model_dump_json()`` masks the secrets and is what anything else should use."""
        return self.model_dump_json(context={REVEAL_SECRETS: True})

    @classmethod
    def from_worker_json(cls, text: str) -> Settings:
        """The settings :meth:`to_worker_json` wrote; no other source (file, environment) is read."""
        return cls.model_validate_json(text)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings from a YAML file (optional), the environment and overrides.

    ``config_file`` defaults to ``$RADLOOP_CONFIG``. Raises :class:`ConfigError` naming the file
    and the field when anything is invalid.
    """
    raw_path = config_file or os.environ.get("RADLOOP_CONFIG")
    path = Path(raw_path) if raw_path else None
    if path is not None and not path.is_file():
        raise ConfigError(f"cannot read config file {path}: no such file")
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings{where}: {problems}") from e
    except SettingsError as e:
        raise ConfigError(f"invalid settings in the environment: {e}") from e
    finally:
        _CONFIG_FILE.reset(token)
