"""The ``dicom`` section: the C-STORE / C-ECHO SCP and its listeners (called AE titles).

Also the DICOM TLS settings (PS3.15 Annex B, the IHE ATNA secure node): the SCP's TLS port
(:class:`DicomTlsSettings`) and the client side every outgoing DICOM link shares
(:class:`DicomTlsClient`, used by C-STORE destinations and DIMSE pull sources). Only paths are
checked here; the files are read, and a clear error raised, when radloop starts
(:func:`radloop.connector.dimse.tls.check_dicom_tls`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from radloop.core.settings.common import Secret, StrictModel, check_ae_title

TLS_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)
"""TLS 1.2 cipher suites offered by default: forward-secret AEAD only (BCP 195, as DCMTK's
non-downgrading BCP 195 profile). TLS 1.3 suites are all AEAD and always allowed."""

TlsMode = Literal["off", "optional", "required"]
"""Per listener: ``off`` plain port only, ``optional`` plain and TLS port, ``required`` TLS port only."""


class _TlsFiles(StrictModel):
    """Certificate, key and CA files (PEM) and the protocol floor, shared by server and client."""

    certificate: Path | None = Field(None, description="Our certificate (PEM, chain after it).")
    private_key: Path | None = Field(None, description="Its private key (PEM).")
    private_key_password: Secret | None = Field(None, description="Password of an encrypted key.")
    ca_certificates: Path | None = Field(
        None, description="CA certificates (PEM bundle) the peer's certificate must chain to."
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Oldest TLS version accepted.")
    ciphers: str = Field(TLS_CIPHERS, description="OpenSSL cipher list for TLS 1.2.")

    @model_validator(mode="after")
    def _pair(self) -> _TlsFiles:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together: set both or neither")
        return self


class DicomTlsSettings(_TlsFiles):
    """The SCP's DICOM TLS port: listeners with ``tls: optional`` or ``required`` answer there."""

    port: int = Field(2762, ge=0, le=65535, description="The TLS port (2762 by convention; 0 = any free).")
    require_client_certificate: bool = Field(
        True,
        description="A caller must present a certificate that chains to ca_certificates; "
        "false = one is verified only if presented.",
    )


class DicomTlsClient(_TlsFiles):
    """DICOM TLS towards a peer (a C-STORE destination, a DIMSE pull source).

    ``ca_certificates`` empty = the system's trust store. ``certificate``/``private_key`` are
    radloop's client certificate, which most secure PACSs require.
    """

    check_hostname: bool = Field(True, description="The peer's certificate must name the host.")
    server_name: str = Field("", description="Name checked against the peer's certificate; empty = host.")


class AllowedCaller(StrictModel):
    """A calling AE allowed to associate with a listener. ``host`` empty = any host.

    ``certificate_cn``: the caller must also come over DICOM TLS with a verified client
    certificate whose subject common name (CN) is this (the certificate ↔ calling AE binding).
    """

    ae_title: str | None = None
    host: str | None = None
    certificate_cn: str | None = None

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
    tls: TlsMode = Field(
        "off",
        description="off: plain port only; optional: plain port and TLS port; required: TLS port only.",
    )

    _check = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    def allows_token(self, token_name: str) -> bool:
        """Whether the API token called ``token_name`` may STOW-RS into this listener."""
        if self.allowed_tokens:
            return token_name in self.allowed_tokens
        return not self.allowed_callers


class CommitmentPeer(StrictModel):
    """Where to send a Storage Commitment result when the requester's association has ended."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    always_new_association: bool = Field(
        False,
        description="Report on a new association even while the requesting one is open (for "
        "modalities that release at once and listen for the result).",
    )

    _check = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class DicomSettings(StrictModel):
    """The DICOM C-STORE / C-ECHO SCP."""

    def processes(self) -> int:
        """How many listener processes ``listener_processes`` means on this machine (one where
        every listener requires TLS: the TLS port is served by the main process alone)."""
        if not self.serves_plain():
            return 1
        return self.listener_processes or os.cpu_count() or 1

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
    max_pdu: int = Field(
        0,
        ge=0,
        description="Maximum PDU size to receive; 0 = unlimited (advertised as 0: the sender may send "
        "each data set in one PDU; P-DATA PDUs are still bounded by max_instance_bytes).",
    )
    durability: Literal["fsync", "commit"] = Field(
        "fsync",
        description="fsync: Success after the file is fsynced, renamed and indexed (survives kill -9 and "
        "power loss). commit: Success after the file is written, renamed and indexed; files are "
        "fsynced in groups every group_fsync_ms (survives kill -9 of any radloop process, not a "
        "power cut before the group fsync; Storage Commitment reports only fsynced instances).",
    )
    group_fsync_ms: float = Field(
        5.0, gt=0, le=10_000, description="commit mode: how often written files are fsynced as a group."
    )
    listener_processes: int = Field(
        0,
        ge=0,
        le=256,
        description="Processes receiving on the DICOM port (SO_REUSEPORT), this one included; "
        "0 = one per CPU core. max_associations applies per process.",
    )
    commitment_peers: list[CommitmentPeer] = Field(
        default_factory=list,
        description="Storage Commitment: requester AE title → address, for results that cannot go back "
        "on the requesting association (it was released first).",
    )
    commitment_timeout_s: float = Field(
        30.0, gt=0, description="Storage Commitment: bound on each step of sending a result."
    )
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
    tls: DicomTlsSettings = Field(default_factory=DicomTlsSettings)
    max_rows: int = Field(65_535, ge=1, description="Largest Rows accepted.")
    max_columns: int = Field(65_535, ge=1, description="Largest Columns accepted.")

    @model_validator(mode="after")
    def _unique_titles(self) -> DicomSettings:
        titles = [lst.ae_title for lst in self.listeners]
        if len(set(titles)) != len(titles):
            raise ValueError(f"listener AE titles must be unique, got {titles}")
        return self

    @model_validator(mode="after")
    def _tls(self) -> DicomSettings:
        tls_titles = [lst.ae_title for lst in self.listeners if lst.tls != "off"]
        if tls_titles and self.tls.certificate is None:
            raise ValueError(
                f"listeners {tls_titles} use TLS: set dicom.tls.certificate and dicom.tls.private_key"
            )
        if tls_titles and self.tls.require_client_certificate and self.tls.ca_certificates is None:
            raise ValueError(
                "dicom.tls.require_client_certificate needs dicom.tls.ca_certificates (the CAs that "
                "sign callers' certificates)"
            )
        if tls_titles and self.port and self.port == self.tls.port:
            raise ValueError(
                f"dicom.port and dicom.tls.port are both {self.port}: TLS needs a port of its own"
            )
        for lst in self.listeners:
            pinned = [c.ae_title for c in lst.allowed_callers if c.certificate_cn is not None]
            if pinned and lst.tls == "off":
                raise ValueError(
                    f"listener {lst.ae_title}: allowed_callers {pinned} name a certificate_cn, "
                    "which only a TLS connection carries: set its tls to optional or required"
                )
        return self

    def serves_plain(self) -> bool:
        """Whether the plain port is opened (some listener has ``tls`` off or optional)."""
        return any(lst.tls != "required" for lst in self.listeners)

    def serves_tls(self) -> bool:
        """Whether the TLS port is opened (some listener has ``tls`` optional or required)."""
        return any(lst.tls != "off" for lst in self.listeners)
