"""The audit log: who did what to which subject, when (rows of ``auditevent``).

``subject`` names the thing acted on by kind and row id (``result:12``), never by a patient's
name or ID; ``detail`` is a small JSON object without PHI. Audit rows are written in the same
transaction as the action they record, so an action and its audit row stand or fall together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session

from radloop.core.models import AuditEvent, utcnow


def record(
    session: Session, actor: str, action: str, subject: str = "", detail: Mapping[str, Any] | None = None
) -> AuditEvent:
    """Add an audit row to ``session`` (flushed, so its ``id`` is set) and return it."""
    event = AuditEvent(
        at=utcnow(),
        actor=actor[:200],
        action=action,
        subject=subject,
        detail=json.dumps(dict(detail), sort_keys=True, default=str) if detail else "",
    )
    session.add(event)
    session.flush()
    return event
