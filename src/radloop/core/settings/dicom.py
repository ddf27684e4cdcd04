"""The ``dicom`` section: the C-STORE / C-ECHO SCP and its listeners (called AE titles)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from radloop.core.settings.common import StrictModel, check_ae_title


class AllowedCaller(StrictModel):
    """A calling AE allowed to associate with a listener. ``host`` empty = any host."""

    ae_title: str | None = None
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else check_ae_title(v)


class ListenerSettings(StrictModel):
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
    allowed_tokens: list[str] = Field(
        default_factory=list,
        description="Names of the API tokens that may STOW-RS into this listener. Empty = any "
        "token with the operator role when allowed_callers is empty, none when it is not "
        "(a listener closed to unknown DICOM callers is closed to STOW-RS too).",
    )
    quiet_period_s: float = Field(
        10.0, gt=0, description="A series is complete after this long with no new instance."
    )
    complete_on_release: bool = Field(
        True, description="A released association completes the series it carried."
    )

    _check = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    def allows_token(self, token_name: str) -> bool:
        """Whether the API token called ``token_name`` may STOW-RS into this listener."""
        if self.allowed_tokens:
            return token_name in self.allowed_tokens
        return not self.allowed_callers


class DicomSettings(StrictModel):
    """The DICOM C-STORE / C-ECHO SCP."""

    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    listeners: list[ListenerSettings] = Field(
        default_factory=lambda: [
            ListenerSettings(ae_title="RADLOOP"),
            ListenerSettings(ae_title="RADLOOP_BRAIN", pipelines=["brain-extraction"]),
            ListenerSettings(ae_title="RADLOOP_PROSTATE", pipelines=["prostate-seg"]),
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
    # -- hostile-input and flood limits ; every one enforced before the work --------
    association_request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="ARTIM: a connection that has not delivered a complete A-ASSOCIATE-RQ this long "
        "after it opened is closed; such connections never count as associations.",
    )
    max_pending_connections: int = Field(
        128, ge=1, description="TCP connections still awaiting their A-ASSOCIATE-RQ; more are closed at once."
    )
    max_association_s: float = Field(
        7200.0, gt=0, description="An association open longer than this is aborted (total-duration bound)."
    )
    max_associate_rq_bytes: int = Field(
        256 << 10, ge=1024, description="Largest A-ASSOCIATE-RQ PDU accepted; larger ones are aborted unread."
    )
    max_instance_bytes: int = Field(
        512 << 20,
        ge=1 << 20,
        description="Largest data set accepted, measured after inflating a deflated one; also bounds "
        "P-DATA PDUs when max_pdu is 0 (unlimited).",
    )
    min_transfer_rate_bytes_s: int = Field(
        64 << 10,
        ge=1,
        description="A PDU must arrive within network_timeout_s plus its length at this rate "
        "(slow links pass, a peer dripping bytes does not).",
    )
    max_frames: int = Field(50_000, ge=1, description="Largest NumberOfFrames accepted.")
    max_rows: int = Field(65_535, ge=1, description="Largest Rows accepted.")
    max_columns: int = Field(65_535, ge=1, description="Largest Columns accepted.")

    @model_validator(mode="after")
    def _unique_titles(self) -> DicomSettings:
        titles = [lst.ae_title for lst in self.listeners]
        if len(set(titles)) != len(titles):
            raise ValueError(f"listener AE titles must be unique, got {titles}")
        return self
