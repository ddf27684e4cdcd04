"""The ``oidc`` section: people sign in with the hospital's OpenID Connect provider.

Authorization code flow with PKCE (S256); the provider is found by discovery from ``issuer``
(``<issuer>/.well-known/openid-configuration``). The ID token is verified (issuer, audience =
``client_id``, expiry, signature by the provider's JWKS, nonce) and the user's roles are read
from the claim ``roles_claim`` (names not among radloop's roles are ignored)::

    oidc:
      issuer: https://login.hospital.example/realms/radiology
      client_id: radloop
      client_secret: "…"        # or RADLOOP_OIDC__CLIENT_SECRET
      roles_claim: roles        # a list of role names in the ID token
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from radloop.core.settings.common import Secret, StrictModel


class OidcSettings(StrictModel):
    """Sign-on for people (the review app); empty ``issuer`` = off."""

    issuer: str = Field("", description="The provider's issuer URL; empty = no sign-on.")
    client_id: str = ""
    client_secret: Secret = Field(SecretStr(""), description="Empty = a public client (PKCE only).")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile"])
    roles_claim: str = Field("roles", description="ID token claim holding the user's role names.")
    username_claim: str = Field(
        "preferred_username", description="ID token claim naming the reviewer (else ``sub``)."
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Discovery, JWKS and token requests time out after this."
    )
    leeway_s: float = Field(30.0, ge=0, description="Tolerated clock difference for exp/iat/nbf.")
    login_ttl_s: float = Field(600.0, gt=0, description="A started login must come back within this.")

    @property
    def enabled(self) -> bool:
        """Whether sign-on is configured."""
        return bool(self.issuer)

    @field_validator("issuer")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"issuer {v!r} must start with https:// (http:// for a local test provider)")
        return v.rstrip("/")
