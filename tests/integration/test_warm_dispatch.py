"""Warm workers and dispatch on notification, with a real ``radloop serve`` and DCMTK storescu.

Once ``radloop serve`` has logged that it is ready, its worker processes have started and hold
the brain pipeline's models, and the first study's job is claimed the moment it is queued: the
job's own timestamps (``created_at`` when routing queued it, ``started_at`` when the dispatcher
claimed it) are less than 100 ms apart, although the dispatcher's poll interval is far longer.
Likewise its SEG is sent to the PACS (a real Orthanc) as soon as the job has finished, although
the outbox's poll interval is ten minutes: the worker's return wakes the outbox.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

import peers
from radloop.core.models import Delivery, Job, JobStep, Result
from radloop.inference.packaged import DEEPBET_BBOX, DEEPBET_MASK
from radloop_proc import RadloopServer

pytestmark = [pytest.mark.peers]

BRAIN_AE = "RADLOOP_BRAIN"
POLL_INTERVAL_S = 5.0  # far longer than the bound: only the wake-up can meet it
OUTBOX_POLL_INTERVAL_S = 600.0  # likewise for the outbox's bound (60 s)


def _config(orthanc: peers.OrthancServer) -> dict[str, object]:
    return {
        "dicom": {
            "listeners": [{"ae_title": BRAIN_AE, "pipelines": ["brain-extraction"], "quiet_period_s": 60}]
        },
        "workers": {"poll_interval_s": POLL_INTERVAL_S},
        "outbox": {"poll_interval_s": OUTBOX_POLL_INTERVAL_S},
        "destinations": [orthanc.destination()],
        "pipelines": {"destinations": {"brain-extraction": ["pacs"]}},
    }


def _started_job(server: RadloopServer) -> Job | None:
    with Session(server.engine) as s:
        return s.exec(select(Job).where(col(Job.started_at).is_not(None))).first()


def _seg_delivery(server: RadloopServer) -> Delivery | None:
    with Session(server.engine) as s:
        return s.exec(
            select(Delivery).join(Result).where(Result.kind == "SEG", col(Delivery.sent_at).is_not(None))
        ).first()


def test_first_job_after_ready_starts_within_100_ms_of_being_queued_on_a_warm_worker(
    t1_series_dir: Path, tmp_path: Path, orthanc: peers.OrthancServer
) -> None:
    with RadloopServer(tmp_path, _config(orthanc)) as server:
        log = server.log_text()
        ready_at = log.index("radloop ready")
        warm_line = log.index("warm models: ")
        assert warm_line < ready_at, log  # workers started (and warmed) before serve was ready
        assert DEEPBET_BBOX in log[warm_line:ready_at] and DEEPBET_MASK in log[warm_line:ready_at], log

        sent = peers.storescu(t1_series_dir, "127.0.0.1", server.port, BRAIN_AE)
        assert sent.returncode == 0, sent.stderr
        job = peers.wait_for(lambda: _started_job(server), 30, interval=0.05, what="the job to start")
        assert job.started_at is not None
        queue_wait = job.started_at - job.created_at
        assert timedelta(0) <= queue_wait < timedelta(milliseconds=100), queue_wait

        # the warm worker's first step ran at once and its models were already loaded
        def deepbet_step() -> JobStep | None:
            with Session(server.engine) as s:
                return s.exec(
                    select(JobStep).where(
                        JobStep.operator == "deepbet.brain_extraction", col(JobStep.duration_s).is_not(None)
                    )
                ).first()

        step = peers.wait_for(deepbet_step, 240, interval=0.2, what=f"deepbet step (log: {server.log_path})")
        assert step.state == "succeeded", step.error
        assert step.stages["load"] < 0.25, step.stages  # taken from the warm cache, not loaded
        log = server.log_text()
        assert log.rindex(": in process (") < log.index("radloop ready"), log  # no model loaded after ready

        # the SEG went to Orthanc when the job finished, not at the outbox's next poll (10 min)
        delivery = peers.wait_for(lambda: _seg_delivery(server), 120, interval=0.2, what="the SEG's delivery")
        with Session(server.engine) as s:
            finished = s.get(Job, job.id)
        assert finished is not None and finished.finished_at is not None and delivery.sent_at is not None
        assert delivery.sent_at - finished.finished_at < timedelta(seconds=60), (delivery, finished)
