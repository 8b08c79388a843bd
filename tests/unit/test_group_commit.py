"""Group commit: concurrent messages share transactions, each gets its own ids, failures reach all."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from securemail.errors import TemporaryFailure
from securemail.queue.batch import GroupCommit


class SlowStore:
    """Stands in for Queue.enqueue_many: each 'transaction' takes 20 ms, like a slow fsync."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list] = []
        self.fail = fail
        self.lock = threading.Lock()

    def enqueue_many(self, items: list) -> list[str]:
        time.sleep(0.02)
        if self.fail:
            raise TemporaryFailure(detail="disk full")
        with self.lock:
            self.batches.append(list(items))
        return [f"id-{i}" for i in items]


def test_concurrent_messages_share_transactions_and_get_their_own_ids():
    store = SlowStore()
    gc = GroupCommit(store.enqueue_many)

    async def main():
        return await asyncio.gather(*(gc.submit([n, n + 1000]) for n in range(50)))

    results = asyncio.run(main())
    assert results == [[f"id-{n}", f"id-{n + 1000}"] for n in range(50)]
    assert sum(len(b) for b in store.batches) == 100
    assert len(store.batches) < 10, f"{len(store.batches)} transactions for 50 messages"


def test_a_failed_commit_fails_every_waiter_of_that_batch_and_the_next_batch_runs():
    store = SlowStore(fail=True)
    gc = GroupCommit(store.enqueue_many)

    async def main():
        return await asyncio.gather(*(gc.submit([n]) for n in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, TemporaryFailure) for r in results)
    store.fail = False

    async def again():
        return await gc.submit(["ok"])
    assert asyncio.run(again()) == ["id-ok"]


def test_batches_respect_the_size_cap():
    store = SlowStore()
    gc = GroupCommit(store.enqueue_many, max_batch=4)

    async def main():
        await asyncio.gather(*(gc.submit([n]) for n in range(10)))

    asyncio.run(main())
    assert max(len(b) for b in store.batches) <= 4 and sum(len(b) for b in store.batches) == 10


def test_cancelled_session_does_not_cancel_the_commit():
    store = SlowStore()
    gc = GroupCommit(store.enqueue_many)

    async def main():
        t = asyncio.create_task(gc.submit(["x"]))
        await asyncio.sleep(0.005)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert store.batches == [["x"]]


def test_linger_gathers_what_arrives_meanwhile_into_one_transaction():
    def run(linger):
        batches = []
        gc = GroupCommit(lambda items: batches.append(list(items)) or list(items), linger=linger)

        async def one(n):
            await asyncio.sleep(n * 0.002)  # arrivals spread over 18 ms
            return await gc.submit([n])

        async def main():
            return await asyncio.gather(*(one(n) for n in range(10)))
        assert asyncio.run(main()) == [[n] for n in range(10)]
        return batches
    assert len(run(0.0)) > 1                      # no linger: a commit as soon as something waits
    assert run(0.1) == [list(range(10))]           # one commit for everything within the window
