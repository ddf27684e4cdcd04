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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from radloop.core.errors import ConfigError
from radloop.core.export_settings import TrainingExportSettings
from radloop.core.inference_settings import InferenceSettings
from radloop.core.review_settings import ReviewSettings
from radloop.core.xnat_settings import XnatServerFields, XnatSettings

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
        default_factory=list,
        description="Empty = any caller; else (AE title, host) pairs that may associate.",
    )
    quiet_period_s: float = Field(
        10.0, gt=0, description="A series is complete after this long with no new instance."
    )
    complete_on_release: bool = Field(
        True, description="A released association completes the series it carried."
    )

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


class _DestinationBase(_Strict):
    """What every destination has: a name, and the result kinds the peer takes."""

    name: str
    accepts: list[str] = Field(
        default_factory=list,
        description="Result kinds this peer takes (SEG, RTSTRUCT, SR, SC); empty = every kind. "
        "Many PACSs reject SEG or RTSTRUCT: list what yours displays.",
    )

    @field_validator("accepts")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if not k.isalnum() or k != k.upper()]
        if bad:
            raise ValueError(f"result kinds are upper-case words such as SEG, RTSTRUCT, SR, SC; got {bad}")
        return v

    def takes(self, kind: str) -> bool:
        """Whether results of ``kind`` (a ``DicomObjects.kind``) go to this destination."""
        return not self.accepts or kind in self.accepts


class DicomDestination(_DestinationBase):
    """A DICOM peer reached by C-STORE (a PACS, a router, a workstation)."""

    kind: Literal["dicom"] = "dicom"
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str
    calling_ae_title: str = "RADLOOP"
    timeout_s: float = 30.0

    _check = field_validator("ae_title", "calling_ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class DicomwebDestination(_DestinationBase):
    """A PACS reached by DICOMweb STOW-RS: instances are POSTed to ``<url>/studies``.

    Credentials come from the config (``password``/``token``, kept as secrets: never shown or
    logged) or, better, from an environment variable named by ``password_env``/``token_env``,
    read when sending.
    """

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str = ""
    password: SecretStr | None = None
    password_env: str = ""
    token: SecretStr | None = None
    token_env: str = ""
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url {v!r} must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> DicomwebDestination:
        has_password = self.password is not None or bool(self.password_env)
        has_token = self.token is not None or bool(self.token_env)
        if self.auth == "basic" and not (self.username and has_password):
            raise ValueError("auth basic needs username and password (or password_env)")
        if self.auth == "bearer" and not has_token:
            raise ValueError("auth bearer needs token (or token_env)")
        if self.auth != "basic" and (self.username or has_password):
            raise ValueError(f"username/password are only used with auth basic, not {self.auth}")
        if self.auth != "bearer" and has_token:
            raise ValueError(f"token is only used with auth bearer, not {self.auth}")
        return self

    def secret(self) -> str:
        """The password (basic) or token (bearer), from the config or its environment variable."""
        basic = self.auth == "basic"
        value, env = (self.password, self.password_env) if basic else (self.token, self.token_env)
        if value is not None:
            return value.get_secret_value()
        if env and env in os.environ:
            return os.environ[env]
        raise ConfigError(f"destination {self.name!r}: environment variable {env!r} is not set")


class FolderDestination(_DestinationBase):
    """A folder results are copied to (a share another system watches)."""

    kind: Literal["folder"] = "folder"
    path: Path


class XnatDestination(_DestinationBase, XnatServerFields):
    """An XNAT project receiving results as session resources (see :mod:`radloop.core.xnat_settings`)."""

    kind: Literal["xnat"] = "xnat"


Destination = Annotated[
    DicomDestination | DicomwebDestination | FolderDestination | XnatDestination, Field(discriminator="kind")
]


class DatabaseSettings(_Strict):
    """Where the index and job state live. Empty ``url`` = SQLite in ``data_dir``."""

    url: str = ""
    echo: bool = False


class WorkerSettings(_Strict):
    """The job executor."""

    executor: Literal["local"] = "local"
    processes: int = Field(1, ge=1, description="Pipeline worker processes of the local executor.")
    lease_s: float = Field(
        120.0, gt=1, description="A running job whose lease is not renewed for this long is re-queued."
    )
    max_attempts: int = Field(3, ge=1)
    retry_base_s: float = Field(10.0, gt=0)
    retry_cap_s: float = Field(600.0, gt=0)
    poll_interval_s: float = Field(0.5, gt=0)
    torch_threads: int = Field(0, ge=0, description="Threads per worker for torch; 0 = torch's default.")
    # warm workers and dispatch (issue 14)
    warm_models: bool = Field(
        True, description="Worker processes load their pipelines' models at start, not at the first job."
    )
    model_memory_mb: int = Field(
        4096, ge=0, description="Memory budget per worker for loaded models; least recently used are evicted."
    )
    start_timeout_s: float = Field(
        300.0, gt=0, description="How long `radloop serve` waits for its worker processes to start and warm."
    )


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


class ApiSettings(_Strict):
    """The HTTP server of ``radloop serve``: REST API, DICOMweb (STOW-RS, QIDO-RS, WADO-RS), metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (logged at start).")
    base_url: str = Field(
        "", description="External URL of the API (RetrieveURL in DICOMweb answers); empty = from the request."
    )
    default_ae_title: str = Field(
        "", description="Listener AE title for STOW-RS to /dicomweb/studies; empty = the first listener."
    )
    max_request_bytes: int = Field(
        4 << 30, ge=1, description="A STOW-RS request body larger than this is refused (413)."
    )
    token_touch_interval_s: float = Field(
        60.0, ge=0, description="``last_used_at`` of a token is written at most this often."
    )
    public_docs: bool = Field(
        False, description="Serve /openapi.json and /docs without a token (they show the API, no data)."
    )


class PollSettings(_Strict):
    """Scheduled polling of a pull source: which studies to look for, and how often."""

    enabled: bool = False
    interval_s: float = Field(300.0, gt=0)
    modalities: list[str] = Field(default_factory=list, description="ModalitiesInStudy to match; [] = any.")
    filters: dict[str, str] = Field(
        default_factory=dict, description="More study-level matching keys (DICOM keywords): values."
    )
    since_last_poll: bool = Field(True, description="Match only StudyDate from the last poll's date on.")
    initial_lookback_days: int = Field(1, ge=0, description="StudyDate window of the very first poll.")
    overlap_days: int = Field(1, ge=0, description="Days before the last poll's date matched too (skew).")
    max_studies: int = Field(100, ge=1, description="Studies retrieved per poll at most (the rest wait).")


class DicomwebSource(_Strict):
    """A PACS reached by QIDO-RS (search) and WADO-RS (retrieve)."""

    kind: Literal["dicomweb"] = "dicomweb"
    name: str
    url: str = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    listener_ae_title: str = Field(description="Our listener AE title retrieved studies are routed as.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (Authorization)")
    timeout_s: float = Field(60.0, gt=0)
    poll: PollSettings = Field(default_factory=PollSettings)

    _check = field_validator("listener_ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class DimseSource(_Strict):
    """A PACS reached by C-FIND (search) and C-MOVE to our own AE or C-GET (retrieve)."""

    kind: Literal["dimse"] = "dimse"
    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(description="The PACS's AE title.")
    listener_ae_title: str = Field(
        description="Our listener AE title: the C-MOVE destination, and how retrieved studies are routed."
    )
    calling_ae_title: str = Field("", description="Our AE title towards the PACS; empty = listener_ae_title.")
    retrieve: Literal["c-move", "c-get"] = "c-move"
    timeout_s: float = Field(60.0, gt=0)
    poll: PollSettings = Field(default_factory=PollSettings)

    _check = field_validator("ae_title", "listener_ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))

    @property
    def calling_ae(self) -> str:
        """The AE title radloop associates with (``calling_ae_title`` or ``listener_ae_title``)."""
        return self.calling_ae_title or self.listener_ae_title


PullSource = Annotated[DicomwebSource | DimseSource, Field(discriminator="kind")]


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
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sources: list[PullSource] = Field(default_factory=list, description="PACS radloop pulls studies from.")
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    xnat: XnatSettings = Field(default_factory=XnatSettings)
    training_export: TrainingExportSettings = Field(default_factory=TrainingExportSettings)

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
        self._check_sources()
        return self

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

    def destination(
        self, name: str
    ) -> DicomDestination | DicomwebDestination | FolderDestination | XnatDestination:
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
        parts = key[len("RADLOOP_") :].lower().split("__")
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
