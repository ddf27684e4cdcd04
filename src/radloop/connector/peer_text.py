"""Peer-supplied text made safe for a log line.

AE titles, UIDs, error comments and exception messages a peer controls can carry newlines and
terminal escape sequences (a forged log line, a rewritten terminal) or be megabytes long. Every
SCP log call that shows such a value passes it through :func:`shown`.
"""

from __future__ import annotations

MAX_SHOWN = 64


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as text with control characters escaped (``\\n``, ``\\x1b``…), cut to ``limit``
    characters (an ellipsis marks the cut)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    escaped = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text[:limit]
    )
    return escaped + ("…" if cut else "")
