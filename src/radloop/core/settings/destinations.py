"""The ``destinations`` and ``outbox`` sections: where results go, and how delivery is retried.

A destination is a discriminated union on ``kind`` (``dicom``, ``dicomweb``, ``folder``,
``xnat``); :mod:`radloop.connector.outbound.destinations` registers one sender per config type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from radloop.core.errors import ConfigError
from radloop.core.settings.common import Secret, StrictModel, check_ae_title
from radloop.core.settings.dicom import DicomTlsClient
from radloop.core.settings.xnat import XnatServerFields


class _DestinationBase(StrictModel):
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
    tls: DicomTlsClient | None = Field(None, description="DICOM TLS to this peer; absent = plain TCP.")
    associations: int = Field(
        1,
        ge=1,
        le=16,
        description="Parallel associations the outbox opens for a batch of due results (a "
        "multi-object delivery, a backlog after an outage); fewer where the peer refuses some. "
        "1 = one association at a time, as most PACSs expect from one sender.",
    )

    _check = field_validator("ae_title", "calling_ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


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
    password: Secret | None = None
    password_env: str = ""
    token: Secret | None = None
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
    """An XNAT project receiving results as session resources (see :mod:`radloop.core.settings.xnat`)."""

    kind: Literal["xnat"] = "xnat"


DestinationSettings = DicomDestination | DicomwebDestination | FolderDestination | XnatDestination
"""Any destination config (the union, for type annotations)."""

Destination = Annotated[DestinationSettings, Field(discriminator="kind")]
"""A ``destinations`` entry, told apart by ``kind``."""


class OutboxSettings(StrictModel):
    """Delivery of results to destinations."""

    retry_base_s: float = Field(5.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(50, ge=1, description="After this many failures a delivery is marked failed.")
    poll_interval_s: float = Field(1.0, gt=0)
