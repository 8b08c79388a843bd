"""Password checks with a failure budget: off the event loop, the same cost for every account.

``AuthGuard.verify`` is the one path from a login attempt (SMTP AUTH, key
publication) to the password file. It answers ``"ok"``, ``"failed"`` or
``"locked"``:

- the scrypt check runs in a small thread pool of its own, never on the event
  loop (other sessions keep their latency) and never in the default executor
  (the crypto stage's threads are not taken by guessers); an unknown account
  costs one scrypt too (``Users.check``), so timing does not tell it apart;
- a ``FailureBudget`` counts failures per source (an IPv4 address, an IPv6 /64)
  and per account name, known or not: ``max_failures`` within ``window``
  seconds lock that source or account for ``lock_seconds``. A locked attempt is
  answered ``"locked"`` without a check, even with the right password.
  Each lock is reported once to ``on_lock`` (the audit log), never a password.

Budgets live in the process's memory: with ``gateway.processes`` > 1 each
serve process counts its own (documented as a residual risk).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal

from .config import AuthBudget
from .net import network_of

log = logging.getLogger(__name__)

Outcome = Literal["ok", "failed", "locked"]
CHECK_THREADS = 2  # concurrent scrypt checks (each holds 16 MiB)
MAX_KEYS = 100_000  # tracked sources and accounts; the oldest are forgotten beyond this
_ACCOUNT_CHARS = 128  # an account name as counted and audited (attacker-chosen text)


def source_of(ip: str) -> str:
    """The source a failure is counted against: an IPv4 address, or the /64 of an IPv6 one."""
    return network_of(ip, v4_prefix=32).removesuffix("/32")


class FailureBudget:
    """Failures per key in a sliding window; a key over budget is locked for a while."""

    def __init__(self, limits: AuthBudget, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        self.limits, self.clock, self.max_keys = limits, clock, max_keys
        self._failures: dict[str, collections.deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, key: str) -> bool:
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._locked_until[key]
        return False

    def fail(self, key: str) -> float | None:
        """Count one failure; the end of the lock (clock time) when this failure locks ``key``."""
        now = self.clock()
        times = self._failures.pop(key, None) or collections.deque()
        while times and times[0] <= now - self.limits.failure_window:
            times.popleft()
        times.append(now)
        if len(times) < self.limits.max_failures:
            self._failures[key] = times  # re-inserted: the dict's order is the least recent first
            self._forget_oldest()
            return None
        until = now + self.limits.lock_seconds
        self._locked_until[key] = until
        self._forget_oldest()
        return until

    def _forget_oldest(self) -> None:
        for table in (self._failures, self._locked_until):
            while len(table) > self.max_keys:
                del table[next(iter(table))]


class AuthGuard:
    """``await verify(peer_ip, user, password)``: the budgeted, off-loop password check."""

    def __init__(self, check: Callable[[str, bytes], bool], limits: AuthBudget = AuthBudget(), *,
                 on_lock: Callable[..., None] | None = None,
                 clock: Callable[[], float] = time.monotonic, check_threads: int = CHECK_THREADS) -> None:
        self.check, self.limits, self.on_lock = check, limits, on_lock
        self.check_threads = check_threads
        self.budget = FailureBudget(limits, clock)
        self._pool: ThreadPoolExecutor | None = None

    def source_locked(self, ip: str) -> bool:
        return self.budget.locked("source " + source_of(ip))

    async def verify(self, ip: str, user: str, password: bytes) -> Outcome:
        account = "account " + user.strip().lower()[:_ACCOUNT_CHARS]
        source = "source " + source_of(ip)
        if self.budget.locked(source) or self.budget.locked(account):
            return "locked"
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.check_threads, thread_name_prefix="auth-check")
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._pool, self.check, user, password):
            return "ok"
        for key in (source, account):
            until = self.budget.fail(key)
            if until is not None:
                await self._locked(key, until - self.budget.clock())
        return "failed"

    async def _locked(self, key: str, seconds: float) -> None:
        scope, _, name = key.partition(" ")
        log.warning("AUTH locked for %s %r for %.0f s after repeated failures", scope, name, seconds)
        if self.on_lock is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: self.on_lock(scope=scope, name=name, seconds=round(seconds)))
            except Exception:  # noqa: BLE001 - a lock holds even if its record cannot be written
                log.warning("audit record auth-locked could not be written", exc_info=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
