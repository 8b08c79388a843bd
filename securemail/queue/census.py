"""What the queue holds now, for the metrics: deliveries still to settle by state, and how long the
oldest of them has waited.

One read of the pending deliveries only (``queued`` and ``held``, through the ``deliveries_due``
index), never of the finished ones, which retention keeps by the million: their totals are the
delivery counters of metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from securemail.db import transaction
from securemail.queue.models import deliveries as D

PENDING = ("queued", "deferred", "held")   # the census's states: "deferred" is queued after a failed try


@dataclass(frozen=True)
class Census:
    by_state: dict[str, int]     # every state of PENDING, zero if none
    oldest_due: float            # seconds the longest-waiting due, unclaimed delivery has waited; 0: none
    oldest: float                # seconds since the oldest pending delivery was queued; 0: none


def census(engine: Engine, now: float) -> Census:
    """The pending deliveries of the queue at ``now``; TemporaryFailure when the database fails."""
    state = sa.case((sa.and_(D.c.state == "queued", D.c.attempts > 0), "deferred"), else_=D.c.state)
    free = sa.or_(D.c.lease_until.is_(None), D.c.lease_until <= now)
    due = sa.and_(D.c.state == "queued", D.c.next_attempt_at <= now, free)
    q = (sa.select(state.label("s"), sa.func.count(), sa.func.min(D.c.created_at),
                   sa.func.min(sa.case((due, D.c.next_attempt_at), else_=None)))
         .where(D.c.state.in_(("queued", "held"))).group_by(state))
    by_state, oldest, oldest_due = dict.fromkeys(PENDING, 0), None, None
    with transaction(engine, write=False) as conn:
        for s, n, created, due_at in conn.execute(q):
            by_state[s] = n
            oldest = created if oldest is None or (created is not None and created < oldest) else oldest
            oldest_due = due_at if oldest_due is None or (due_at is not None and due_at < oldest_due) else oldest_due
    return Census(by_state, max(0.0, now - oldest_due) if oldest_due is not None else 0.0,
                  max(0.0, now - oldest) if oldest is not None else 0.0)
