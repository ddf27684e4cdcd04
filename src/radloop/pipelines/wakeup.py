"""Wake-ups inside one process: "something was committed, look now" instead of at the next poll.

The :class:`~radloop.runtime.Runtime` owns one per channel (nothing here is a process global):

* ``jobs_queued``: the assembler notifies it after committing queued jobs; the local executor's
  dispatcher claims them the moment they are queued.
* ``results_ready``: the local executor notifies it when a job's worker process has returned (its
  results and their delivery rows are committed by then); the outbox sends them at once.

A signal carries no data: the database stays the truth, and each waiter still polls
(``workers.poll_interval_s``, ``outbox.poll_interval_s``) for work from elsewhere (another
process, a retry falling due).
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
