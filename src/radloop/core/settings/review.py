"""The ``review`` section of the settings: PACS-launched review of AI results in the browser.

A PACS workstation opens a *launch URL* (see :mod:`radloop.viewer_launch.signing`) signed with
``launch_key``; radloop checks the signature and the time stamps, then starts a review session
(an HttpOnly cookie signed with a key derived from ``secret_key``)::

    review:
      launch_key: "a long random string shared with the PACS"   # empty = secret_key
      base_url: https://radloop.example.org                     # what `radloop review-url` prints
      link_ttl_s: 300          # a link is valid this long after its ``ts`` (unless it names ``exp``)
      clock_skew_s: 60         # tolerated difference between the PACS's clock and ours
      session_ttl_s: 7200      # how long a review session (cookie) lasts
      deliver_edits: true      # send edited SEGs to the destinations that received the AI SEG
      iocm_rejection_notes: false  # also send an IOCM rejection KOS for a rejected AI result
      prefetch: true           # `radloop serve` converts new AI results before the first launch
      cache_max_results: 50    # converted review data kept for this many results
      max_link_lifetime_s: 86400  # a link whose exp − ts is longer is refused
      one_time_links: false    # true = a link opens one session only (its signature is recorded)
      trusted_proxies: []      # addresses whose X-Forwarded-Proto: https makes the cookie Secure

``launch_key`` is a :data:`~radloop.core.settings.common.Secret`: read it with
``get_secret_value()`` (or :func:`radloop.viewer_launch.signing.launch_key`).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from radloop.core.settings.common import Key, StrictModel

MIN_KEY_LENGTH = 32
"""Shortest ``launch_key`` accepted: 32 characters (an HMAC key should carry ≥ 128 bits)."""


class ReviewSettings(StrictModel):
    """Launch URLs, review sessions and what happens to edited masks."""

    launch_key: Key = Field(
        SecretStr(""),
        description="HMAC-SHA256 key the PACS signs launch URLs with; empty = secret_key. "
        "Set its own key in production so that the PACS never holds secret_key.",
    )
    base_url: str = Field(
        "",
        description="External URL of radloop's HTTP server, used in printed launch URLs; "
        "empty = http://<api.host>:<api.port>.",
    )
    link_ttl_s: float = Field(300.0, gt=0, description="A launch URL is valid this long after its ts.")
    clock_skew_s: float = Field(60.0, ge=0, description="Tolerated clock difference with the PACS.")
    session_ttl_s: float = Field(7200.0, gt=0, description="Lifetime of a review session cookie.")
    deliver_edits: bool = Field(
        True, description="Send an edited SEG to the destinations the AI SEG was delivered to."
    )
    iocm_rejection_notes: bool = Field(
        False,
        description="Also send an IOCM rejection note (KOS 'Rejected for Quality Reasons') for a rejected "
        "AI result, so a PACS that implements IOCM hides it.",
    )
    prefetch: bool = Field(
        True, description="radloop serve converts new AI results for the review app before anyone opens them."
    )
    cache_max_results: int = Field(
        50,
        ge=1,
        description="Converted review data is kept for this many results (newest); older is deleted.",
    )
    max_link_lifetime_s: float = Field(
        86400.0, gt=0, description="A launch URL whose exp − ts is longer than this is refused."
    )
    require_login: bool = Field(
        False,
        description="A launch URL opens the app only for a user signed in (oidc) as the link's reviewer.",
    )
    one_time_links: bool = Field(
        False,
        description="A launch URL opens one session only: its signature is recorded on first use "
        "and a second use is refused.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="IP addresses of TLS-terminating proxies whose X-Forwarded-Proto is believed "
        "(the session cookie is Secure when it says https).",
    )
    denied_audit_interval_s: float = Field(
        60.0,
        ge=0,
        description="Anonymous denied launches are written to the audit log at most once per "
        "this many seconds per reason, with a count of those in between.",
    )
    max_edit_bytes: int = Field(
        256 << 20, ge=1, description="An uploaded edited mask larger than this is refused (413)."
    )

    @field_validator("launch_key")
    @classmethod
    def _key_length(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if key and len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"launch_key must be at least {MIN_KEY_LENGTH} characters (or empty)")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url {v!r} must start with http:// or https://")
        return v.rstrip("/")
