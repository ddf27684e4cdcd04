"""The ``audit`` section: the IHE ATNA audit trail and the syslog audit repository it is sent to.

Every audit message (DICOM PS3.15 Annex A.5 XML) is a row of ``audit_message`` first; a sender
loop delivers the rows to ``repository`` over TLS (RFC 5424 messages, RFC 5425 framing) and marks
each sent only after the write succeeded::

    audit:
      source_id: radloop-node-1           # AuditSourceID: which node wrote the message
      repository:
        host: audit.hospital.example
        port: 6514                        # syslog over TLS (RFC 5425)
        ca_file: /etc/radloop/audit-ca.pem
        cert_file: /etc/radloop/radloop.pem   # client certificate (ATNA wants mutual TLS)
        key_file: /etc/radloop/radloop.key
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, model_validator

from radloop.core.settings.common import StrictModel


class AuditRepository(StrictModel):
    """A syslog audit record repository (IHE ATNA): RFC 5424 messages over TLS (RFC 5425)."""

    host: str
    port: int = Field(6514, ge=1, le=65535)
    tls: bool = Field(
        True, description="RFC 5425 (TLS); false = plain TCP with the same framing, tests only."
    )
    ca_file: Path | None = Field(
        None, description="CA that signed the repository's certificate; None = system CAs."
    )
    cert_file: Path | None = Field(None, description="radloop's client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="The client certificate's private key.")
    server_name: str = Field("", description="Name checked in the repository's certificate; empty = host.")
    timeout_s: float = Field(10.0, gt=0, description="Connect and write time out after this.")

    @model_validator(mode="after")
    def _pair(self) -> AuditRepository:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("audit.repository: cert_file and key_file go together")
        return self


class AuditSettings(StrictModel):
    """The audit trail: messages always kept in the database, sent when a repository is set."""

    source_id: str = Field(
        default_factory=lambda: f"radloop@{socket.gethostname()}",
        max_length=128,
        description="AuditSourceID of every message (which radloop node wrote it).",
    )
    enterprise_site_id: str = Field("", max_length=128, description="AuditEnterpriseSiteID (optional).")
    repository: AuditRepository | None = Field(
        None, description="Where messages are sent; None = kept locally."
    )
    send_interval_s: float = Field(1.0, gt=0, description="The sender looks for unsent messages this often.")
    batch: int = Field(200, ge=1, le=10_000, description="Messages written per connection and tick at most.")
    access_window_s: float = Field(
        60.0,
        ge=0,
        description="WADO-RS reads of one study by one client within this many seconds are one "
        "DICOM Instances Accessed message (a viewer fetches frame by frame).",
    )
    retry_base_s: float = Field(
        2.0, gt=0, description="First pause after the repository could not be reached; doubles per failure."
    )
    retry_cap_s: float = Field(60.0, gt=0, description="Longest pause between tries.")
