"""Queue retention: finished messages' metadata is removed after ``queue.retention``.

A message's body is removed by the settle that finishes it (``Queue.settle_many``).
What stays is metadata: the envelope, the size, the delivery states and errors, kept
for ``queue.retention`` so that an operator can answer "what happened to this mail".
``Retention`` is the running gateway's sweep: every ``queue.purge_interval`` it purges
in bounded batches (one transaction each, the write lock released between them), then
scrubs the SQLite WAL. ``securemail queue purge`` runs the same ``purge_all`` at once.
Purges are idempotent: several serve processes or nodes on one PostgreSQL database may
sweep at the same time. The audit log is never purged (hash-chained, no content).
"""

from __future__ import annotations

import asyncio
import logging

from securemail.errors import TemporaryFailure
from securemail.queue.store import PURGE_BATCH, AuditSpec, Purged, Queue

log = logging.getLogger(__name__)


def purge_all(queue: Queue, older_than: float, *, batch: int = PURGE_BATCH,
              audit: AuditSpec = None) -> Purged:
    """Purge batch after batch until nothing is left; then scrub the WAL. The sum of them."""
    steps = [queue.purge(older_than, batch, audit=audit)]
    while steps[-1].more:
        steps.append(queue.purge(older_than, batch, audit=audit))
    total = Purged(*(sum(getattr(p, f) for p in steps) for f in ("messages", "deliveries", "bodies")))
    if total.rows or total.bodies:
        queue.checkpoint()
    return total


class Retention:
    """The periodic sweep of a running gateway (one per serve process)."""

    def __init__(self, queue: Queue, retention: float, interval: float) -> None:
        self.queue, self.retention, self.interval = queue, retention, interval

    def sweep(self) -> Purged:
        return purge_all(self.queue, self.retention, audit=("purged", {"by": "retention"}))

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep now and every ``interval`` seconds until ``stop`` is set; a failure waits for the next."""
        while not stop.is_set():
            try:
                done = await asyncio.to_thread(self.sweep)
                if done.rows or done.bodies:
                    log.info("queue retention: removed %d messages, %d deliveries, %d bodies",
                             done.messages, done.deliveries, done.bodies)
            except TemporaryFailure as err:
                log.warning("queue retention: queue unavailable (%s); next sweep in %.0fs",
                            err.detail or err, self.interval)
            except Exception:  # noqa: BLE001 - the sweep must outlive any one failure
                log.exception("queue retention: sweep failed; next sweep in %.0fs", self.interval)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
