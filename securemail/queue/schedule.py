"""Retry schedule: when to try a deferred delivery again, or when to give up (like Postfix)."""

from __future__ import annotations


def next_retry(attempts: int, first: float = 300, cap: float = 3600,
               give_up_after: float = 5 * 86400, *, created_at: float,
               now: float) -> float | None:
    """The time of the next attempt after ``attempts`` failed tries, or None to give up.

    The delay doubles from ``first`` up to ``cap`` (Postfix minimal/maximal_backoff_time);
    a message older than ``give_up_after`` (maximal_queue_lifetime) is given up, and no
    retry is scheduled past that deadline, so the last try happens right at it.
    """
    deadline = created_at + give_up_after
    if now >= deadline:
        return None
    doublings = max(0, attempts - 1)
    delay = cap if doublings >= 64 else min(cap, first * 2 ** doublings)
    return min(now + delay, deadline)
