"""Wake-up of the job dispatcher: "a job was queued", signalled inside one process.

The assembler queues jobs in the same process as the local executor's dispatcher thread
(``radloop serve``); it notifies :data:`JOBS_QUEUED` after committing them, so the dispatcher
claims a job the moment it is queued instead of at its next poll. The signal carries no data:
the database stays the truth, and the dispatcher still polls (``workers.poll_interval_s``) for
jobs queued elsewhere (another process, a retry falling due).
"""

from __future__ import annotations

import threading


class Wakeup:
    """A level-triggered signal: :meth:`notify` wakes the next (or current) :meth:`wait`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def notify(self) -> None:
        """Something changed: wake the waiter (a notification; never blocks, never raises)."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came. Clears it."""
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke


JOBS_QUEUED = Wakeup()
"""Jobs were queued in this process (set by the assembler, awaited by the local executor)."""
