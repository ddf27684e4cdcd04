"""The ``sources`` section: PACSs radloop pulls studies from (QIDO/WADO-RS or C-FIND/C-MOVE)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from radloop.core.settings.common import Secret, StrictModel, check_ae_title
from radloop.core.settings.dicom import DicomTlsClient


class PollSettings(StrictModel):
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


class DicomwebSource(StrictModel):
    """A PACS reached by QIDO-RS (search) and WADO-RS (retrieve)."""

    kind: Literal["dicomweb"] = "dicomweb"
    name: str
    url: str = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    listener_ae_title: str = Field(description="Our listener AE title retrieved studies are routed as.")
    headers: dict[str, Secret] = Field(
        default_factory=dict,
        description="Extra HTTP headers (Authorization); secrets: never shown or logged.",
    )
    timeout_s: float = Field(60.0, gt=0)
    poll: PollSettings = Field(default_factory=PollSettings)

    _check = field_validator("listener_ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    def header_values(self) -> dict[str, str]:
        """The extra HTTP headers with their real values, for the HTTP client."""
        return {name: value.get_secret_value() for name, value in self.headers.items()}


class DimseSource(StrictModel):
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
    tls: DicomTlsClient | None = Field(
        None,
        description="DICOM TLS to the PACS (C-FIND, C-GET, the C-MOVE request); absent = plain TCP. "
        "A C-MOVE's C-STOREs come back to our listener: give it tls optional or required, "
        "and the PACS our TLS port.",
    )
    poll: PollSettings = Field(default_factory=PollSettings)

    _check = field_validator("ae_title", "listener_ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @property
    def calling_ae(self) -> str:
        """The AE title radloop associates with (``calling_ae_title`` or ``listener_ae_title``)."""
        return self.calling_ae_title or self.listener_ae_title


PullSource = Annotated[DicomwebSource | DimseSource, Field(discriminator="kind")]
"""A ``sources`` entry, told apart by ``kind``."""
