"""The ``local`` executor: a dispatcher thread that claims due jobs and runs them in a pool of
worker processes (``workers.processes``), renewing their leases while they run.

State travels with the job row: a claim is a conditional update, leases expire if this process
dies, and at start-up the jobs this host's previous incarnation was running are re-queued. Worker
processes are asked to die with their parent (Linux ``PR_SET_PDEATHSIG``) so a killed server leaves
no orphan finishing a job behind its back.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from radloop.core import jobs
from radloop.core.errors import JobError
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings
from radloop.core.ticking import run_every
from radloop.pipelines.wakeup import Wakeup
from radloop.pipelines.warm import ModelCache, warm_models

log = logging.getLogger(__name__)


def worker_prefix() -> str:
    """Lease owner prefix of every local executor on this host."""
    return f"local@{socket.gethostname()}"


@dataclass
class _Running:
    future: Future[str]
    renewed_at: float


class LocalExecutor:
    """Claims jobs from the database and runs them in worker processes."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        wakeup: Wakeup | None = None,
        results_ready: Wakeup | None = None,
    ) -> None:
        """``wakeup``: notified when jobs are queued (the runtime's ``jobs_queued``); ``results_ready``:
        notified here when a job's worker returns, its results committed (the outbox awaits it)."""
        self.settings = settings
        self.engine = engine
        self.wakeup = wakeup if wakeup is not None else Wakeup()
        self.results_ready = results_ready if results_ready is not None else Wakeup()
        self.worker_id = f"{worker_prefix()}:{os.getpid()}"
        self._stop = threading.Event()
        self._running: dict[int, _Running] = {}
        self._pool = self._new_pool()
        self._thread = threading.Thread(target=self._loop, name="radloop-dispatcher", daemon=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.settings.workers.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.settings.to_worker_json(),),
        )

    def start(self) -> None:
        """Re-queue what a previous incarnation left running, start the worker processes (each
        loads its models) and wait for them, then start dispatching."""
        requeued = jobs.requeue_all_running(self.engine, worker_prefix())
        if requeued:
            log.warning("re-queued %d job(s) left running by a previous server: %s", len(requeued), requeued)
        self._start_workers()
        self._thread.start()

    def _start_workers(self) -> None:
        """Make every worker process start now, not at the first job, and log what each has warm.

        A process pool starts its processes as work arrives: no-op calls are submitted until each
        process has answered one (its initializer, which loads the models, runs first), bounded by
        ``workers.start_timeout_s``; past that, dispatching starts anyway and the log says so.
        """
        cfg = self.settings.workers
        start = time.monotonic()
        deadline = start + cfg.start_timeout_s
        answered: dict[int, str] = {}
        while len(answered) < cfg.processes and time.monotonic() < deadline:
            pending = [self._pool.submit(_worker_started) for _ in range(cfg.processes - len(answered))]
            done, _ = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            for future in done:
                pid, warm = future.result()
                answered[pid] = warm
        for pid, warm in sorted(answered.items()):
            log.info("worker process %d started; warm models: %s", pid, warm or "none")
        if len(answered) < cfg.processes:
            log.warning(
                "%d of %d worker processes started within %.0f s; dispatching anyway",
                len(answered),
                cfg.processes,
                cfg.start_timeout_s,
            )
        else:
            log.info("%d worker process(es) ready in %.1f s", cfg.processes, time.monotonic() - start)

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self.wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _loop(self) -> None:
        # woken the moment a job is queued in this process; the interval catches the rest
        # (jobs queued by other processes, retries falling due, finished jobs to reap)
        run_every(
            "dispatcher", self._tick, self.settings.workers.poll_interval_s, self._stop, self.wakeup.wait
        )

    def _tick(self) -> None:
        jobs.requeue_expired(self.engine)
        self._reap()
        self._renew_leases()
        self._fill()

    def _fill(self) -> None:
        while len(self._running) < self.settings.workers.processes and not self._stop.is_set():
            job = jobs.claim_next(self.engine, self.worker_id, self.settings.workers.lease_s)
            if job is None or job.id is None:
                return
            log.info(
                "job %s (%s) started, attempt %d/%d", job.id, job.pipeline, job.attempts, job.max_attempts
            )
            future = self._pool.submit(_run_in_worker, job.id, self.worker_id)
            future.add_done_callback(self._job_returned)
            self._running[job.id] = _Running(future, time.monotonic())

    def _job_returned(self, _future: Future[str]) -> None:
        """A worker returned a job: its results are committed; send them, reap it, start the next."""
        self.results_ready.notify()
        self.wakeup.notify()

    def _renew_leases(self) -> None:
        interval = self.settings.workers.lease_s / 3
        now = time.monotonic()
        for job_id, running in list(self._running.items()):
            if now - running.renewed_at >= interval:
                jobs.renew_lease(self.engine, job_id, self.worker_id, self.settings.workers.lease_s)
                running.renewed_at = now

    def _reap(self) -> None:
        broken = False
        for job_id, running in list(self._running.items()):
            if not running.future.done():
                continue
            del self._running[job_id]
            try:
                log.info("job %s finished: %s", job_id, running.future.result())
            except BrokenProcessPool as e:
                broken = True
                self._record_failure(job_id, f"worker process died: {e}", transient=True)
            except Exception as e:  # an error the worker could not record itself
                self._record_failure(job_id, f"{type(e).__name__}: {e}", transient=True)
        if broken:
            log.error("worker pool broken (a worker process died); starting a new pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self._start_workers()

    def _record_failure(self, job_id: int, error: str, *, transient: bool) -> None:
        cfg = self.settings.workers
        state = jobs.fail_attempt(
            self.engine,
            job_id,
            self.worker_id,
            error,
            transient=transient,
            base_s=cfg.retry_base_s,
            cap_s=cfg.retry_cap_s,
        )
        log.error("job %s: %s → %s", job_id, error, state)


# --- inside a worker process ------------------------------------------------------------------
_WORKER: dict[str, object] = {}


def _init_worker(settings_json: str) -> None:
    """Worker start: die with the parent, then build this process's own :class:`~radloop.runtime.Runtime`.

    The server migrated the schema before it started this pool, so the worker never migrates.
    """
    _die_with_parent()
    from radloop.pipelines.runner import JobRunner
    from radloop.runtime import Runtime  # the composition root imports this module

    settings = Settings.from_worker_json(settings_json)
    configure_logging(settings.log_level)
    limit_threads(settings.workers.torch_threads)
    runtime = Runtime.build(settings, migrate=False)
    _WORKER["runner"] = JobRunner(
        settings, runtime.engine, runtime.catalog, priors=runtime.priors, models=runtime.models
    )
    warm_models(runtime.models, settings, runtime.catalog)
    _WORKER["models"] = runtime.models
    _WORKER["settings"] = settings
    _WORKER["engine"] = runtime.engine
    log.info("worker process %d: %d start-up objects frozen", os.getpid(), freeze_start_up_objects())


def freeze_start_up_objects() -> int:
    """Take what this process holds since its start out of the cyclic garbage collector's scans;
    returns how many objects that is.

    A warm worker holds about 700 000 objects from its start (modules, settings, catalog, loaded
    models) for its whole life. In the collector's oldest generation, every full collection during
    a job walks them all, and a job allocates enough (pydicom parses 170 headers in the series →
    volume step) to trigger such collections: 0.2-0.4 s of a warm brain-extraction job went there.
    Garbage is collected first, so that only live objects are frozen; what jobs create later is
    collected as usual.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def limit_threads(threads: int) -> None:
    """``workers.torch_threads``: cap torch's intra-op threads in this worker process (0 = torch's own
    default, one per core).

    Setting ``OMP_NUM_THREADS`` alone does not do it once torch is imported (Celery's prefork pool
    imports it in the parent before forking), so torch is told directly as well; ONNX Runtime
    sessions read the same setting when they are created.
    """
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch
    except ImportError:  # an ONNX-only or Triton-only worker
        return
    torch.set_num_threads(threads)


def _worker_started() -> tuple[int, str]:
    """A no-op run in a worker process once its initializer is done: its pid and warm models."""
    models = _WORKER.get("models")
    return os.getpid(), models.summary() if isinstance(models, ModelCache) else ""


def _run_in_worker(job_id: int, worker_id: str) -> str:
    """Run one claimed job and record its outcome; returns the final state's name."""
    from radloop.pipelines.runner import JobRunner

    runner = _WORKER["runner"]
    settings = _WORKER["settings"]
    assert isinstance(runner, JobRunner) and isinstance(settings, Settings)
    cfg = settings.workers
    try:
        runner.run(job_id)
    except JobError as e:
        state = jobs.fail_attempt(
            runner.engine,
            job_id,
            worker_id,
            str(e),
            transient=e.transient,
            base_s=cfg.retry_base_s,
            cap_s=cfg.retry_cap_s,
        )
        log.warning("job %s failed: %s → %s", job_id, e, state)
        return str(state)
    except Exception as e:  # job boundary: any other error is recorded on the job and retried
        log.exception("job %s raised", job_id)
        state = jobs.fail_attempt(
            runner.engine,
            job_id,
            worker_id,
            f"{type(e).__name__}: {e}",
            transient=True,
            base_s=cfg.retry_base_s,
            cap_s=cfg.retry_cap_s,
        )
        return str(state)
    jobs.finish(runner.engine, job_id, worker_id)
    return "succeeded"


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        log.debug("PR_SET_PDEATHSIG unavailable; orphaned workers end when their job ends")
