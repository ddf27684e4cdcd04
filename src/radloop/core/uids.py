"""UID generation: random for new things, deterministic where a retry must reproduce a result."""

from __future__ import annotations

import hashlib
import uuid


def new_uid() -> str:
    """A fresh UID under the UUID-derived root 2.25 (PS3.5 §B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def derived_uid(*parts: str) -> str:
    """A UID determined by ``parts``: the same parts always give the same UID.

    Used for result objects so that a retried job writes the *same* SOP Instance UIDs and a
    PACS receiving the retry overwrites rather than duplicates (idempotent delivery).
    """
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big') >> 1}"
