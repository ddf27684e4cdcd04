"""Several listener processes on one port (``dicom.listener_processes``), so that parallel
associations use every core instead of sharing one GIL.

Every process binds the DICOM port with ``SO_REUSEPORT`` (Linux spreads new connections over
the listening sockets); the main process (``radloop serve``) is one of them and starts the
others as child processes (spawned: each gets the settings through
:meth:`~radloop.core.settings.Settings.to_worker_json`, builds its own
:class:`~radloop.runtime.Runtime` and runs the same :class:`~radloop.connector.dimse.scp.StorageSCP`
with the same allowlists, AE routing and limits, per process). A child only receives: it writes
files and index rows into the shared data folder and database, and reports which series each
association carries and when it ends to the main process through a queue; the main process's
:class:`~radloop.connector.ingest.AssociationTracker` completes a series when the last
association carrying it (in any process) is released, exactly as for its own associations; the
quiet period, routing and jobs stay in the main process. Children die with the main process
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of the server leaves no listener behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from radloop.connector.ingest import AssociationTracker
from radloop.core.settings import Settings

log = logging.getLogger(__name__)
_STOP = None


class ListenerProcesses:
    """The child listener processes and the thread that forwards their association ends."""

    def __init__(self, settings: Settings, port: int, tracker: AssociationTracker) -> None:
        """``tracker``: the main process's (its SCP's), which the children's association events reach."""
        self.settings = settings
        self.port = port
        self.tracker = tracker
        self._context = multiprocessing.get_context("spawn")
        self._ends: Any = self._context.Queue()
        self._ready: Any = self._context.Queue()
        self._children: list[BaseProcess] = []
        self._thread = threading.Thread(target=self._forward, name="radloop-listener-ends", daemon=True)

    def start(self, count: int) -> None:
        """Start ``count`` children (:meth:`wait_ready` waits until they listen)."""
        self._thread.start()
        settings_json = self.settings.to_worker_json()
        for index in range(count):
            child = self._context.Process(
                target=_child_main,
                args=(settings_json, self.port, self._ends, self._ready),
                name=f"radloop-listener-{index + 1}",
                daemon=True,
            )
            child.start()
            self._children.append(child)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Wait (bounded) until every child listens; raise if one could not start."""
        for _ in self._children:
            try:
                pid, error = self._ready.get(timeout=timeout_s)
            except queue.Empty as e:
                raise RuntimeError(f"a listener process did not start within {timeout_s:g} s") from e
            if error:
                raise RuntimeError(f"listener process {pid} could not start: {error}")
        log.info(
            "%d listener process(es) share port %d with this one (SO_REUSEPORT): %s",
            len(self._children),
            self.port,
            ", ".join(str(c.pid) for c in self._children),
        )

    def stop(self) -> None:
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                child.terminate()
        for child in self._children:
            child.join(timeout=20)
            if child.is_alive():
                child.kill()
        self._ends.put(_STOP)
        self._thread.join(timeout=10)

    def _forward(self) -> None:
        while True:
            item = self._ends.get()
            if item is _STOP:
                return
            try:
                if item[0] == "carrying":
                    self.tracker.carrying(item[1], item[2])
                else:
                    self.tracker.ended(item[1], item[2], item[3], item[4])
            except Exception:  # a thread of its own: log, never die
                log.exception("an association event from a listener process could not be handled")


class _ForwardingTracker(AssociationTracker):
    """A child's tracker: every event goes to the main process's tracker."""

    def __init__(self, events: Any) -> None:
        super().__init__(lambda _ids, _ae: None)
        self.events = events

    def carrying(self, key: str, series_id: int) -> None:
        self.events.put(("carrying", key, series_id))

    def ended(self, key: str, series_ids: Sequence[int], called_ae: str, released: bool) -> None:
        self.events.put(("ended", key, list(series_ids), called_ae, released))


def _child_main(settings_json: str, port: int, ends: Any, ready: Any) -> None:
    """A listener process: the SCP on the shared port until SIGTERM (or the parent's death)."""
    from radloop.connector.dimse.scp import StorageSCP
    from radloop.connector.dimse.ups_scp import UpsHandlers
    from radloop.core.logging import configure_logging
    from radloop.pipelines.executor import _die_with_parent
    from radloop.runtime import Runtime

    _die_with_parent()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent decides
    settings = Settings.from_worker_json(settings_json)
    configure_logging(settings.log_level)
    try:
        runtime = Runtime.build(settings, migrate=False)
        scp = StorageSCP(
            settings,
            runtime.store,
            lambda _ids, _ae: None,
            UpsHandlers(runtime.worklist),
            _ForwardingTracker(ends),
        )
        scp.start(port=port, reuse_port=True)
    except Exception as e:  # reported to the parent, which refuses to start
        ready.put((multiprocessing.current_process().pid, f"{type(e).__name__}: {e}"))
        return
    ready.put((multiprocessing.current_process().pid, ""))
    stop.wait()
    scp.stop()
    runtime.store.close()
