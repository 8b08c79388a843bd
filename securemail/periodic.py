"""The periodic jobs of a running gateway: run now, then every interval, until told to stop.

``every(interval, stop, job, what=...)`` runs the coroutine function ``job``; a failure is logged
and waits for the next turn, so a job outlives any one failure. With ``lock`` (a file in the home),
the job runs only in the process that holds a non-blocking ``flock`` on it: of the serve processes
of one home (``gateway.processes``), one fetches the manifest and one writes audit checkpoints, and
when that process ends another takes over at its next turn. Nodes on other hosts have homes of
their own, and each runs its jobs.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import SecureMailError

log = logging.getLogger(__name__)


class HostLock:
    """A non-blocking exclusive ``flock`` on a file, held from the first ``held()`` that gets it
    until ``release()`` (or the end of the process)."""

    def __init__(self, path: Path) -> None:
        self.path, self._fd = Path(path), None

    def held(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


async def every(interval: float, stop: asyncio.Event, job: Callable[[], Awaitable[object]], *,
                what: str, lock: Path | None = None) -> None:
    """Run ``job()`` now and every ``interval`` seconds until ``stop`` is set (see the module)."""
    sole = HostLock(lock) if lock is not None else None
    try:
        while not stop.is_set():
            try:
                if sole is None or sole.held():
                    await job()
            except SecureMailError as err:
                log.warning("%s failed (%s); next in %.0fs", what, err.detail or err.message, interval)
            except Exception:  # noqa: BLE001 - the job must outlive any one failure
                log.exception("%s failed; next in %.0fs", what, interval)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
    finally:
        if sole is not None:
            sole.release()
