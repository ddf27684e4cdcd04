"""The ``api`` section: the HTTP server of ``radloop serve``."""

from __future__ import annotations

from pydantic import Field

from radloop.core.settings.common import StrictModel


class ApiSettings(StrictModel):
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
        1 << 30, ge=1, description="A STOW-RS request body larger than this is refused (413)."
    )
    token_touch_interval_s: float = Field(
        60.0, ge=0, description="``last_used_at`` of a token is written at most this often."
    )
    public_docs: bool = Field(
        False, description="Serve /openapi.json and /docs without a token (they show the API, no data)."
    )
    # --- HTTP limits: slow clients, floods and stuck requests
    header_timeout_s: float = Field(
        10.0, gt=0, description="Request line and headers not complete in this time: connection closed."
    )
    body_timeout_s: float = Field(
        600.0, gt=0, description="A request body not received completely in this time is refused (408)."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="A request whose answer has not started in this time is answered 503."
    )
    keep_alive_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this.")
    max_concurrency: int = Field(
        100, ge=1, description="Open connections and requests at once; above it new requests get 503."
    )
    max_header_bytes: int = Field(
        65536, ge=1024, description="Request line and headers larger than this are refused (400)."
    )
