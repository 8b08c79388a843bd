"""Group commit: queue writes from concurrent tasks share one durable transaction.

Used for intake (messages accepted by concurrent SMTP sessions: each answers
250 only after the transaction holding its items has committed) and for the
workers' settles (delivered/deferred). While one commit (and its fsync) is in
flight, new work gathers and the next commit takes it all: no timer, no added
latency when the gateway is idle. Where nobody waits for the commit (the
workers' settles), ``linger`` seconds of gathering before each commit make
fewer, larger transactions: fewer trips to a thread and fewer fsyncs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Sequence

log = logging.getLogger(__name__)


class GroupCommit:
    def __init__(self, run_many: Callable[[list], list], max_batch: int = 256,
                 linger: float = 0.0) -> None:
        self._enqueue_many = run_many
        self._max = max_batch
        self._linger = linger
        self._pending: list[tuple[Sequence, asyncio.Future]] = []
        self._running = False

    async def submit(self, items: Sequence) -> list:
        """Commit ``items`` with whatever else is waiting; their results, in order."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self._pending:
                if self._linger:
                    await asyncio.sleep(self._linger)
                batch, size = [], 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max):
                    entry = self._pending.pop(0)
                    batch.append(entry)
                    size += len(entry[0])
                flat = [item for items, _ in batch for item in items]
                try:
                    ids = await asyncio.to_thread(self._enqueue_many, flat)
                except BaseException as err:  # noqa: BLE001 - every waiter gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                pos = 0
                for items, fut in batch:
                    if not fut.done():
                        fut.set_result(ids[pos:pos + len(items)])
                    pos += len(items)
        finally:
            self._running = False
