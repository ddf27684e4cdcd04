"""Peer-supplied text made safe for a log line.

AE titles, UIDs, error comments and exception messages a peer controls can carry newlines and
terminal escape sequences (a forged log line, a rewritten terminal) or be megabytes long. Every
SCP log call that shows such a value passes it through :func:`shown`.
"""

from __future__ import annotations

import logging

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


class EscapingFilter(logging.Filter):
    """A logging filter that escapes control characters in the formatted message (never drops)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(not ch.isprintable() for ch in message):
            record.msg, record.args = shown(message, MAX_LIBRARY_MESSAGE), None
        return True


MAX_LIBRARY_MESSAGE = 1000
_FILTER = EscapingFilter()


def escape_library_logs(prefix: str = "pynetdicom") -> None:
    """Attach :class:`EscapingFilter` to every logger of a library that logs peer values verbatim
    (pynetdicom logs an invalid AE title as received). Idempotent."""
    names = [n for n in logging.root.manager.loggerDict if n == prefix or n.startswith(prefix + ".")]
    for name in [prefix, *names]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
