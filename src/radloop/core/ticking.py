"""``run_every``: the one loop that ticks background work (assembler, outbox, pollers, dispatcher)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_every(
    name: str,
    tick: Callable[[], object],
    interval_s: float,
    stop: threading.Event,
    wait: Callable[[float], object] | None = None,
) -> None:
    """Call ``tick`` now and then every ``interval_s`` seconds until ``stop`` is set.

    Blocks the calling thread; :meth:`radloop.server.Server.spawn` runs it in a thread of its own.
    A tick that raises is logged with its traceback and the next tick retries. ``wait`` (default
    ``stop.wait``) may end the pause early, e.g. when new work is queued.
    """
    pause = wait or stop.wait
    while not stop.is_set():
        try:
            tick()
        except Exception:
            # The one broad except of the background loops: a tick is a notification boundary.
            # Its work is durable (rows with states and next-attempt times), so a failed tick
            # (a database hiccup, a peer that is down) loses nothing and the next tick retries;
            # letting it propagate would end the thread and silently stop that work for good.
            log.exception("%s tick failed", name)
        pause(interval_s)
