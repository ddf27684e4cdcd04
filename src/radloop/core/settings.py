"""One typed ``Settings`` object, built once at start, validated, and passed in.

Sources, highest precedence first: arguments given to :func:`load_settings`, ``RADLOOP_*``
environment variables (nested fields with ``__``, e.g. ``RADLOOP_DICOM__PORT=11112``), then
the YAML config file (``--config`` or ``RADLOOP_CONFIG``), then the defaults below. Nothing here
is read at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from radloop.core.errors import ConfigError

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")
DEV_SECRET = "radloop-development-secret-change-me"


def _check_ae_title(value: str) -> str:
    title = value.strip()
    if not 1 <= len(title) <= 16 or not set(title) <= _AE_CHARS:
        raise ValueError(f"AE title {value!r} must be 1-16 characters of letters, digits, space, _ - .")
    return title


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowedCaller(_Strict):
    """A calling AE allowed to associate with a listener. ``host`` empty = any host."""

    ae_title: str | None = None
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae_title(v)


class ListenerSettings(_Strict):
    """One called AE title of the DICOM SCP and what happens to what it receives."""

    ae_title: str
    pipelines: list[str] = Field(
        default_factory=list,
        description="Pipelines whose match rules are tried for series received here; empty = all.",
    )
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=list, description="Empty = any caller; else (AE title, host) pairs that may associate."
    )
    quiet_period_s: float = Field(10.0, gt=0, description="A series is complete after this long with no new instance.")
    complete_on_release: bool = Field(True, description="A released association completes the series it carried.")

    _check = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class DicomSettings(_Strict):
    """The DICOM C-STORE / C-ECHO SCP."""

    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    listeners: list[ListenerSettings] = Field(
        default_factory=lambda: [
            ListenerSettings(ae_title="RADLOOP"),
            ListenerSettings(ae_title="RADLOOP_BRAIN", pipelines=["brain-extraction"]),
        ]
    )
    min_free_bytes: int = Field(
        1 << 30, ge=0, description="Below this much free disk, C-STORE answers Out of Resources."
    )
    tcp_nodelay: bool = True
    max_pdu: int = Field(0, ge=0, description="Maximum PDU size to receive; 0 = unlimited.")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0

    @model_validator(mode="after")
    def _unique_titles(self) -> DicomSettings:
        titles = [lst.ae_title for lst in self.listeners]
        if len(set(titles)) != len(titles):
            raise ValueError(f"listener AE titles must be unique, got {titles}")
        return self


class DicomDestination(_Strict):
    """A DICOM peer reached by C-STORE (a PACS, a router, a workstation)."""

    kind: Literal["dicom"] = "dicom"
    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str
    calling_ae_title: str = "RADLOOP"
    timeout_s: float = 30.0

    _check = field_validator("ae_title", "calling_ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class FolderDestination(_Strict):
    """A folder results are copied to (a share another system watches)."""

    kind: Literal["folder"] = "folder"
    name: str
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="kind")]


class DatabaseSettings(_Strict):
    """Where the index and job state live. Empty ``url`` = SQLite in ``data_dir``."""

    url: str = ""
    echo: bool = False


class WorkerSettings(_Strict):
    """The job executor."""

    executor: Literal["local"] = "local"
    processes: int = Field(1, ge=1, description="Pipeline worker processes of the local executor.")
    lease_s: float = Field(120.0, gt=1, description="A running job whose lease is not renewed for this long is re-queued.")
    max_attempts: int = Field(3, ge=1)
    retry_base_s: float = Field(10.0, gt=0)
    retry_cap_s: float = Field(600.0, gt=0)
    poll_interval_s: float = Field(0.5, gt=0)
    torch_threads: int = Field(0, ge=0, description="Threads per worker for torch; 0 = torch's default.")


class OutboxSettings(_Strict):
    """Delivery of results to destinations."""

    retry_base_s: float = Field(5.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(50, ge=1, description="After this many failures a delivery is marked failed.")
    poll_interval_s: float = Field(1.0, gt=0)


class PipelineSettings(_Strict):
    """Where pipeline files come from."""

    dirs: list[Path] = Field(default_factory=list, description="Extra folders of pipeline YAML files.")
    include_reference: bool = Field(True, description="Load the reference pipelines shipped with radloop.")
    destinations: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra destinations per pipeline name ('*' = every pipeline), added to the file's own.",
    )

    def destinations_for(self, pipeline: str, own: list[str]) -> list[str]:
        """The pipeline file's destinations plus those configured here, without repeats."""
        extra = self.destinations.get(pipeline, []) + self.destinations.get("*", [])
        return list(dict.fromkeys([*own, *extra]))


class Settings(BaseSettings):
    """All of radloop's configuration; see the README's "Configuration" section."""

    model_config = SettingsConfigDict(env_prefix="RADLOOP_", env_nested_delimiter="__", extra="forbid")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("radloop-data")
    secret_key: str = DEV_SECRET
    log_level: str = "INFO"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    pipelines: PipelineSettings = Field(default_factory=PipelineSettings)
    destinations: list[Destination] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.environment == "production" and self.secret_key == DEV_SECRET:
            raise ValueError("secret_key must be set (RADLOOP_SECRET_KEY) when environment is production")
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique, got {names}")
        return self

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; SQLite in ``data_dir`` unless ``database.url`` is set."""
        return self.database.url or f"sqlite:///{(self.data_dir / 'radloop.db').resolve()}"

    def destination(self, name: str) -> DicomDestination | FolderDestination:
        """The destination called ``name``; :class:`ConfigError` if none is configured."""
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigError(f"no destination named {name!r} in settings (have: {[d.name for d in self.destinations]})")

    def listener(self, ae_title: str) -> ListenerSettings | None:
        """The listener for a called AE title, or None."""
        for lst in self.dicom.listeners:
            if lst.ae_title == ae_title.strip():
                return lst
        return None


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings from a YAML file (optional), the environment and overrides.

    Raises :class:`ConfigError` naming the file and the field when anything is invalid.
    """
    path = config_file or os.environ.get("RADLOOP_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        file_values = loaded
    try:
        # model_validate reads no environment itself: the precedence is made explicit here.
        merged = _deep_merge(_deep_merge(file_values, _env_values()), overrides)
        return Settings.model_validate(merged)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid settings{where}: {problems}") from e


def _env_values() -> dict[str, Any]:
    """``RADLOOP_*`` variables as a nested dict (``__`` separates levels); JSON/YAML values parsed."""
    out: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.startswith("RADLOOP_") or key == "RADLOOP_CONFIG":
            continue
        parts = key[len("RADLOOP_"):].lower().split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip()[:1] in "[{" else raw
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
