"""The outbox: deliver each result to each of its destinations, retrying with backoff.

One ``delivery`` row per result × destination. A failure keeps the row ``pending`` with its
``last_error`` and a later ``next_attempt_at`` (exponential backoff, capped); after
``outbox.max_attempts`` it becomes ``failed`` and stays visible until retried or dismissed.
Nothing is lost while a peer is down. Results carry deterministic SOP Instance UIDs, so a
re-sent result replaces (not duplicates) the copy a PACS already holds.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from radloop.connector.outbound.destinations import sender_for
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError, DeliveryError
from radloop.core.jobs import backoff_seconds
from radloop.core.models import Delivery, DeliveryState, Result, utcnow
from radloop.core.settings import Settings
from radloop.core.ticking import run_every
from radloop.pipelines.wakeup import Wakeup

log = logging.getLogger(__name__)


class Outbox:
    """Sends due deliveries; call :meth:`tick` periodically, or at once when :attr:`wakeup` fires."""

    def __init__(self, settings: Settings, engine: Engine, wakeup: Wakeup | None = None) -> None:
        """``wakeup``: notified when deliveries were committed (a job's worker returned), so
        :meth:`run` attempts them the moment they exist instead of at its next poll."""
        self.settings = settings
        self.engine = engine
        self.wakeup = wakeup if wakeup is not None else Wakeup()

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop``: at once when woken, else every ``outbox.poll_interval_s`` (deliveries
        queued by other processes, retries falling due). Set ``stop``, then notify, to end it."""
        run_every("outbox", self.tick, self.settings.outbox.poll_interval_s, stop, self.wakeup.wait)

    def tick(self, limit: int = 50) -> int:
        """Attempt every due delivery (at most ``limit``); returns how many were sent."""
        with session_scope(self.engine) as s:
            due = s.exec(
                select(Delivery)
                .where(Delivery.state == DeliveryState.pending, Delivery.next_attempt_at <= utcnow())
                .order_by(col(Delivery.next_attempt_at))
                .limit(limit)
            ).all()
        return sum(self._attempt(d) for d in due)

    def _attempt(self, delivery: Delivery) -> bool:
        with session_scope(self.engine) as s:
            result = s.get(Result, delivery.result_id)
        error = ""
        try:
            if result is None:
                raise DeliveryError(f"result {delivery.result_id} no longer exists")
            sender_for(self.settings.destination(delivery.destination)).send(
                self.settings.data_dir / result.path
            )
        except (DeliveryError, ConfigError) as e:
            error = str(e)
        with session_scope(self.engine) as s:
            row = s.get(Delivery, delivery.id)
            if row is None or row.state != DeliveryState.pending:
                return False
            row.attempts += 1
            if not error:
                row.state, row.sent_at, row.last_error = DeliveryState.sent, utcnow(), ""
                log.info("delivery %s: result %s sent to %s", row.id, row.result_id, row.destination)
            else:
                self._schedule_retry(row, error)
            s.add(row)
        return not error

    def _schedule_retry(self, row: Delivery, error: str) -> None:
        cfg = self.settings.outbox
        row.last_error = error
        if row.attempts >= cfg.max_attempts:
            row.state = DeliveryState.failed
            log.error(
                "delivery %s to %s failed for good after %d attempts: %s",
                row.id,
                row.destination,
                row.attempts,
                error,
            )
        else:
            delay = backoff_seconds(row.attempts, cfg.retry_base_s, cfg.retry_cap_s)
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
            log.warning(
                "delivery %s to %s failed (attempt %d), retry in %.0f s: %s",
                row.id,
                row.destination,
                row.attempts,
                delay,
                error,
            )
