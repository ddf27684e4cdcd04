"""XNAT configuration: the ``xnat`` destination kind and the ``xnat`` section of the settings.

An XNAT *destination* names a server, a project, and how a DICOM study maps onto XNAT's
project / subject / session hierarchy; results delivered to it become session resources (and an
ROI collection assessor where the server has that type)::

    destinations:
      - kind: xnat
        name: research-xnat
        url: https://xnat.example.org
        project: BRAIN_AI
        subject_from: PatientID          # or AccessionNumber, StudyInstanceUID, lookup
        session_from: AccessionNumber
        netrc_file: /etc/radloop/netrc   # or user: and password: (the password is never logged)
        import_source: true              # also send the source series through XNAT's import service

The ``xnat`` section configures the project watcher and the Container Service command::

    xnat:
      watch: {destination: research-xnat, pipelines: [brain-extraction], interval_s: 60}
      command: {image: "registry.example.org/radloop-xnat:0.1.0", gpu_resource_name: gpu}

Nothing here talks to a server; :mod:`radloop.xnat_plugin` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from radloop.core.settings.common import Secret, StrictModel

LabelSource = Literal["PatientID", "AccessionNumber", "StudyInstanceUID", "lookup"]
"""Where an XNAT subject or session label comes from: a DICOM attribute of the study, or the lookup file."""

LookupKey = Literal["PatientID", "AccessionNumber", "StudyInstanceUID"]
"""The DICOM attribute whose value is looked up in the first column of the lookup file."""

DEFAULT_IMAGE = "radloop/radloop-xnat:0.1.0"
"""Image named in generated Container Service commands unless ``xnat.command.image`` is set."""


class XnatServerFields(StrictModel):
    """The fields of an ``xnat`` destination (``XnatDestination`` in
    :mod:`radloop.core.settings.destinations` adds the name and ``accepts`` every destination
    has): a project on an XNAT server (1.8 or 1.9) reached through its REST API, and how studies
    map onto it."""

    url: str = Field(description="Site URL, e.g. https://xnat.example.org (no credentials in it).")
    project: str = Field(description="Project ID (not its title); the project must exist.")
    subject_from: LabelSource = "PatientID"
    session_from: LabelSource = "StudyInstanceUID"
    lookup_file: Path | None = Field(
        None, description="CSV with columns <lookup_key>,subject,session; needed by 'lookup' labels."
    )
    lookup_key: LookupKey = "StudyInstanceUID"
    user: str | None = None
    password: Secret | None = None
    netrc_file: Path | None = Field(
        None, description="netrc file with the server's login; None = $NETRC or ~/.netrc (when no password)."
    )
    import_source: bool = Field(False, description="Also import the source series (XNAT's import service).")
    verify_tls: bool = True
    timeout_s: float = Field(120.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {value!r} must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("url must not carry credentials; use user/password or a netrc file")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_sources(self) -> XnatServerFields:
        uses_lookup = "lookup" in (self.subject_from, self.session_from)
        if uses_lookup and self.lookup_file is None:
            raise ValueError("subject_from/session_from 'lookup' needs lookup_file")
        if self.password is not None and not self.user:
            raise ValueError("password is set but user is not")
        return self


class XnatWatchSettings(StrictModel):
    """``radloop xnat watch``: which server, which pipelines, how often."""

    destination: str = Field("", description="Name of an xnat destination: its server and login are used.")
    pipelines: list[str] = Field(default_factory=list, description="Pipelines tried on each new session.")
    interval_s: float = Field(60.0, gt=0, description="Seconds between polls.")
    max_attempts: int = Field(3, ge=1, description="A session failing this many times is given up.")
    scan_resource: str = Field("DICOM", description="Label of the scan resource that holds the DICOM files.")


class XnatCommandSettings(StrictModel):
    """``radloop xnat command``: what the generated Container Service command names."""

    image: str = Field(DEFAULT_IMAGE, description="Image (with tag) built from deploy/xnat/Dockerfile.")
    gpu_resource_name: str = Field(
        "gpu", description="Swarm generic resource a GPU pipeline requests (the name your nodes advertise)."
    )

    @field_validator("image")
    @classmethod
    def _tagged(cls, value: str) -> str:
        if ":" not in value.rsplit("/", 1)[-1]:
            raise ValueError(f"image {value!r} needs a tag (the Container Service refuses untagged images)")
        return value


class XnatSettings(StrictModel):
    """The ``xnat`` section: project watcher and Container Service command generation."""

    watch: XnatWatchSettings = Field(default_factory=XnatWatchSettings)
    command: XnatCommandSettings = Field(default_factory=XnatCommandSettings)
