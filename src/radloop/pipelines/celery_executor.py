"""The ``celery`` executor: job ids travel over RabbitMQ to ``radloop worker`` processes on any host.

The database stays the truth. A job row is created as with the local executor; a
:class:`JobPublisher` (in the ingest and api roles) sends only its id to the job's queue, with
the job's priority as the message priority, and stamps ``job.published_at``. A worker
(:func:`run_worker`, Celery's prefork pool) receives the id and first *claims* the row
(:func:`radloop.core.jobs.claim`: queued and due → running, with a lease in its name); a message
for a job that is already running, finished, cancelled or not yet due does nothing. The
message is acknowledged only after the run (``acks_late``), and a thread renews the lease while
the job runs.

What covers each failure:

* a worker killed mid-job (``kill -9``): its lease expires, the publisher's
  :func:`~radloop.core.jobs.requeue_expired` re-queues the job and publishes it again; the message
  RabbitMQ redelivers meanwhile finds the job still leased and does nothing;
* a message lost (broker restarted before it was persisted, a queue purged): the publisher sends
  a queued job again once its last publication is ``workers.republish_after_s`` old;
* a message published twice, or redelivered after RabbitMQ's consumer timeout closed the channel
  of a long job (``consumer_timeout``, 30 min by default): the claim fails, nothing runs twice;
  the long job goes on (``worker_cancel_long_running_tasks_on_connection_loss`` is off) and
  records its outcome in the database;
* the broker down: publishing fails and is retried at the next tick (the job stays queued);
  workers reconnect by themselves.

Queues by resource: a pipeline's ``resources.queue``, else ``workers.gpu_queue`` when it needs
GPUs, else ``workers.cpu_queue``. Every queue is declared with ``x-max-priority`` so a ``stat``
job overtakes a backlog of ``low`` ones.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from sqlalchemy.engine import Engine

from radloop.core import jobs
from radloop.core.models import Job, Priority
from radloop.core.settings import Settings
from radloop.pipelines.catalog import PipelineCatalog

log = logging.getLogger(__name__)

TASK = "radloop.run_job"
MAX_PRIORITY = 9
PRIORITY = {Priority.stat: 9, Priority.high: 6, Priority.normal: 3, Priority.low: 0}
"""Job priority → RabbitMQ message priority (higher is delivered first)."""


def worker_name(settings: Settings) -> str:
    """This worker's name: ``workers.name`` or the host name."""
    return settings.workers.name or socket.gethostname()


def queue_for(settings: Settings, catalog: PipelineCatalog, pipeline: str) -> str:
    """The queue of ``pipeline``'s jobs: its ``resources.queue``, else gpu/cpu by ``resources.gpus``."""
    if pipeline not in catalog:
        return settings.workers.cpu_queue
    needs = catalog.get(pipeline).spec.resources
    if needs.queue:
        return needs.queue
    return settings.workers.gpu_queue if needs.gpus > 0 else settings.workers.cpu_queue


def declare(name: str) -> Queue:
    """A durable queue with message priorities, on a direct exchange of the same name."""
    return Queue(  # type: ignore[no-untyped-call]
        name,
        Exchange(name, type="direct", durable=True),  # type: ignore[no-untyped-call]
        routing_key=name,
        durable=True,
        queue_arguments={"x-max-priority": MAX_PRIORITY},
    )


def make_app(settings: Settings, queues: list[str] | None = None) -> Celery:
    """A Celery app for ``settings`` (nothing is connected until it publishes or consumes)."""
    cfg = settings.workers
    names = list(dict.fromkeys([cfg.cpu_queue, cfg.gpu_queue, *cfg.queues, *(queues or [])]))
    app = Celery("radloop", broker=cfg.broker_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_queues=[declare(n) for n in names],
        task_default_queue=cfg.cpu_queue,
        task_queue_max_priority=MAX_PRIORITY,
        task_default_priority=PRIORITY[Priority.normal],
        task_acks_late=True,  # acknowledged after the run; the row's lease guards the job meanwhile
        task_reject_on_worker_lost=True,  # a pool process killed mid-job: the message goes back
        task_ignore_result=True,  # outcomes are job rows, not Celery results
        worker_prefetch_multiplier=1,  # a busy worker holds no message another worker could run
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # RabbitMQ's consumer timeout closes the channel of a long job (PRECONDITION_FAILED): a
        # channel error Celery would treat as fatal (the worker, and its job, would stop); retried,
        # the consumer reconnects, the job runs on, and the redelivered message is ignored
        broker_channel_error_retry=True,
        worker_proc_alive_timeout=cfg.start_timeout_s,  # pool processes load their models first
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},  # a publish is done when RabbitMQ has it
        result_backend=None,
    )
    app.task(name=TASK, acks_late=True, ignore_result=True)(run_job)
    return app


class JobPublisher:
    """Sends the ids of queued, due jobs to their queues (and re-queues jobs whose lease expired).

    Several publishers (one per ingest or api host) may run: :func:`~radloop.core.jobs.mark_published`
    lets exactly one of them send each publication.
    """

    def __init__(self, settings: Settings, engine: Engine, catalog: PipelineCatalog) -> None:
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.app = make_app(settings)
        self._queues: dict[str, Queue] = {}

    def tick(self) -> int:
        """Re-queue expired leases, then publish what is due; returns how many were published."""
        for job_id in jobs.requeue_expired(self.engine):
            log.warning("job %s: lease expired (worker gone?); re-queued for another worker", job_id)
        sent = 0
        for job in jobs.to_publish(self.engine, self.settings.workers.republish_after_s):
            if not jobs.mark_published(self.engine, job):
                continue  # another publisher took it
            try:
                self.publish(job)
            except Exception as e:  # the broker is down or refused: the job stays queued
                jobs.unmark_published(self.engine, job.id or 0)
                log.warning("cannot publish job %s (retrying at the next tick): %s", job.id, e)
                break
            sent += 1
        return sent

    def publish(self, job: Job) -> None:
        """Send ``job``'s id to its queue with its priority (also used to send one twice, in tests)."""
        name = queue_for(self.settings, self.catalog, job.pipeline)
        queue = self._queues.setdefault(name, declare(name))
        self.app.send_task(
            TASK,
            args=[job.id],
            queue=queue,
            priority=PRIORITY[job.priority],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
        )
        log.info("job %s (%s, %s) published to queue %s", job.id, job.pipeline, job.priority.value, name)

    def close(self) -> None:
        """Close the broker connections."""
        self.app.close()


def broker_reachable(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """None if the broker answers, else why not (for ``radloop health``)."""
    try:
        url = settings.workers.broker_url.get_secret_value()
        with Connection(url, connect_timeout=timeout_s) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as e:  # any failure to connect is the answer
        return f"{type(e).__name__}: {e}"
    return None


# --- the worker ---------------------------------------------------------------------------------
_SETTINGS_JSON: dict[str, str] = {}


def run_job(job_id: int) -> str:
    """The task: claim the row, run it with its lease renewed, record the outcome in the row."""
    from radloop.pipelines import executor

    settings, engine = executor._WORKER["settings"], executor._WORKER["engine"]
    assert isinstance(settings, Settings) and isinstance(engine, Engine)
    worker_id = f"{worker_name(settings)}:{os.getpid()}"
    lease_s = settings.workers.lease_s
    job = jobs.claim(engine, job_id, worker_id, lease_s)
    if job is None:
        log.info("job %s: already claimed, finished or not due; message ignored", job_id)
        return "ignored"
    log.info("job %s (%s) claimed by %s, attempt %d", job_id, job.pipeline, worker_id, job.attempts)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(engine, job_id, worker_id, lease_s, stop), name="radloop-lease", daemon=True
    )
    renewer.start()
    try:
        state = executor._run_in_worker(job_id, worker_id)
    finally:
        stop.set()
        renewer.join(timeout=10)
    log.info("job %s finished on %s: %s", job_id, worker_id, state)
    return state


def _renew(engine: Engine, job_id: int, worker_id: str, lease_s: float, stop: threading.Event) -> None:
    while not stop.wait(lease_s / 3):
        try:
            if not jobs.renew_lease(engine, job_id, worker_id, lease_s):
                log.warning("job %s: lease lost (cancelled or re-queued)", job_id)
                return
        except Exception:  # a database hiccup: the next renewal retries before the lease runs out
            log.exception("job %s: lease renewal failed", job_id)


def _init_pool_process(**_: Any) -> None:
    from radloop.pipelines import executor

    executor._init_worker(_SETTINGS_JSON["settings"])


def run_worker(settings: Settings, on_ready: Any = None, on_stop: Any = None) -> None:
    """``radloop worker``: consume ``workers.queues`` with ``workers.processes`` pool processes."""
    cfg = settings.workers
    _SETTINGS_JSON["settings"] = settings.to_worker_json()
    worker_process_init.connect(_init_pool_process, weak=False)
    if on_ready is not None:
        worker_ready.connect(lambda **_: on_ready(), weak=False)
    if on_stop is not None:
        worker_shutting_down.connect(lambda **_: on_stop(), weak=False)
    app = make_app(settings)
    log.info("worker %s: queues %s, %d process(es)", worker_name(settings), cfg.queues, cfg.processes)
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(cfg.queues)}",
            f"--concurrency={cfg.processes}",
            f"--hostname={worker_name(settings)}@%h",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level}",
        ]
    )
