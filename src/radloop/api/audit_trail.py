"""Audit messages (IHE ATNA, :mod:`radloop.core.atna`) for the HTTP routes that read patient data:
a Query per QIDO-RS or UPS-RS search, DICOM Instances Accessed per WADO-RS read of a study."""

from __future__ import annotations

import time

from fastapi import Request

from radloop.api.deps import Ctx
from radloop.core import atna, tokens
from radloop.core.db import session_scope


def audit_query(request: Request, ctx: Ctx, caller: tokens.Caller) -> None:
    """A Query audit message (PS3.15 A.5.3.12) naming the QIDO-RS path and query string."""
    text = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    address = request.client.host if request.client else ""
    with session_scope(ctx.engine) as s:
        atna.record(
            s, ctx.settings.audit, atna.query(atna.person(f"token:{caller.name}", address=address), text)
        )


def audit_access(request: Request, ctx: Ctx, caller: tokens.Caller, study: str) -> None:
    """A DICOM Instances Accessed audit message (PS3.15 A.5.3.5) for a WADO-RS retrieve of ``study``:
    one per client and study per ``audit.access_window_s`` (a viewer reads frame by frame)."""
    address = request.client.host if request.client else ""
    seen: dict[tuple[str, str, str], float] | None = getattr(request.app.state, "wado_audited", None)
    if seen is None:
        seen = request.app.state.wado_audited = {}
    now, key = time.monotonic(), (caller.name, address, study)
    if now - seen.get(key, -1e18) < ctx.settings.audit.access_window_s:
        return
    if len(seen) > 10_000:  # forget old entries rather than grow without bound
        seen.clear()
    seen[key] = now
    with session_scope(ctx.engine) as s:
        user = atna.person(f"token:{caller.name}", address=address)
        atna.record(s, ctx.settings.audit, atna.instances_accessed(s, user, [study]))
