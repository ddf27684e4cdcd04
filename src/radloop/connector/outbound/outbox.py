"""The outbox: deliver each result to each of its destinations, retrying with backoff.

One ``delivery`` row per result × destination. A failure keeps the row ``pending`` with its
``last_error`` and a later ``next_attempt_at`` (exponential backoff, capped); after
``outbox.max_attempts`` it becomes ``failed`` and stays visible until retried or dismissed.
Nothing is lost while a peer is down. Results carry deterministic SOP Instance UIDs, so a
re-sent result replaces (not duplicates) the copy a PACS already holds.

Due deliveries to one destination whose sender takes batches (a DICOM peer: its
``associations`` setting) go in one call, over parallel associations; each delivery's row is
still updated on its own, with its own outcome, exactly as when sent alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from radloop.connector.outbound.destinations import BatchSender, sender_for
from radloop.core import atna
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError, DeliveryError
from radloop.core.jobs import backoff_seconds
from radloop.core.models import Delivery, DeliveryState, Result, utcnow
from radloop.core.settings import DicomDestination, Settings
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
        by_destination: dict[str, list[Delivery]] = {}
        for d in due:
            by_destination.setdefault(d.destination, []).append(d)
        return sum(self._attempt_batch(name, group) for name, group in by_destination.items())

    def _attempt_batch(self, destination: str, deliveries: Sequence[Delivery]) -> int:
        """Several due deliveries to one destination: in one call where its sender takes batches,
        else one by one. Returns how many were sent."""
        try:
            sender = sender_for(self.settings.destination(destination))
        except ConfigError:
            sender = None  # each attempt below records the error
        if len(deliveries) < 2 or not isinstance(sender, BatchSender):
            return sum(self._attempt(d) for d in deliveries)
        with session_scope(self.engine) as s:
            results = [s.get(Result, d.result_id) for d in deliveries]
        paths = [self.settings.data_dir / r.path for r in results if r is not None]
        try:
            outcomes = iter(sender.send_many(paths))
        except (DeliveryError, ConfigError) as e:  # ConfigError: an unreadable TLS file
            outcomes = iter([str(e)] * len(paths))
        sent = 0
        for delivery, result in zip(deliveries, results, strict=True):
            error = f"result {delivery.result_id} no longer exists" if result is None else next(outcomes)
            sent += self._record(delivery, result, error)
        return sent

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
        return self._record(delivery, result, error)

    def _record(self, delivery: Delivery, result: Result | None, error: str) -> bool:
        """One delivery's outcome in its own transaction: sent, or a retry scheduled, or failed
        for good (audited). False when another process settled the row meanwhile."""
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
            if result is not None and row.state != DeliveryState.pending:
                self._audit(s, row, result)
        return not error

    def _audit(self, s: Session, row: Delivery, result: Result) -> None:
        """DICOM Instances Transferred (PS3.15 A.5.3.4, action Read: radloop sent them), in the
        transaction that marks the delivery sent or failed for good."""
        source = atna.radloop_process(requestor=True, role=atna.ROLE_SOURCE)
        destination = _participant(self.settings, row.destination)
        failed = row.state == DeliveryState.failed
        message = atna.instances_transferred(
            s,
            atna.EventAction.read,
            source,
            destination,
            [result.study_instance_uid],
            outcome=atna.Outcome.serious_failure if failed else atna.Outcome.success,
            description=row.last_error if failed else f"{result.kind} {result.sop_instance_uid}",
        )
        atna.record(s, self.settings.audit, message)

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


def _participant(settings: Settings, name: str) -> atna.Participant:
    """The destination as an audit participant: its AE title and host when it is a DICOM peer."""
    try:
        dest = settings.destination(name)
    except ConfigError:
        dest = None
    if isinstance(dest, DicomDestination):
        return atna.dicom_peer(dest.ae_title, requestor=False, role=atna.ROLE_DESTINATION, address=dest.host)
    return atna.Participant(user_id=name, requestor=False, role=atna.ROLE_DESTINATION)
