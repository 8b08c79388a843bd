"""The bridge's loader (bridge/loader.py): read-ahead for a client reading in order, one upstream
FETCH per batch, nothing read ahead for random access or for messages too big to keep, and an
upstream failure answered to the waiting command without leaving the message stuck."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from securemail.bridge.cache import ViewCache
from securemail.bridge.loader import CACHE_LARGEST, READ_AHEAD, Loader, shown_with_structure


def message(uid: int) -> bytes:
    return f"Subject: message {uid}\r\nContent-Type: text/plain\r\n\r\nbody of {uid}\r\n".encode()


class Upstream:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = False

    async def run(self, folder, fn):
        return fn(self)

    def fetch(self, uids, items):
        assert items == ["BODY.PEEK[]"]
        if self.fail:
            raise OSError("upstream gone")
        self.batches.append(list(uids))
        return {u: {b"BODY[]": message(u)} for u in uids}


def box(count: int, sizes: dict[int, int] | None = None):
    upstream = Upstream()

    async def show(raw: bytes):
        await asyncio.sleep(0)
        return shown_with_structure(lambda r: r, raw)

    async def run_cpu(fn, *args):
        return fn(*args)
    parts = SimpleNamespace(upstream=upstream, show=show, cache=ViewCache(32 << 20), headers=ViewCache(8 << 20),
                            run_cpu=run_cpu)
    b = SimpleNamespace(name="INBOX", uid_validity=7, messages={u: None for u in range(1, count + 1)},
                        sizes=sizes if sizes is not None else {u: 500 for u in range(1, count + 1)}, parts=parts)
    return b, Loader(b), upstream


def test_a_client_reading_in_order_gets_batches_read_ahead():
    async def main():
        b, loader, upstream = box(200)
        for uid in range(1, 201):
            content = await loader.content(uid)
            assert bytes(content) == message(uid)
        fetched = [u for batch in upstream.batches for u in batch]
        assert sorted(fetched) == list(range(1, 201))              # each message fetched once
        assert len(upstream.batches) <= 200 // (READ_AHEAD // 2) + 2  # in batches, not one by one
        assert max(len(batch) for batch in upstream.batches) >= READ_AHEAD // 2
    asyncio.run(main())


def test_random_access_reads_nothing_ahead():
    async def main():
        b, loader, upstream = box(100)
        for uid in range(100, 0, -10):
            assert bytes(await loader.content(uid)) == message(uid)
        assert upstream.batches == [[u] for u in range(100, 0, -10)]
    asyncio.run(main())


def test_messages_too_big_to_keep_are_not_read_ahead():
    async def main():
        sizes = {u: (CACHE_LARGEST + 1 if u % 2 == 0 else 500) for u in range(1, 41)}
        b, loader, upstream = box(40, sizes)
        await loader.content(1)
        await asyncio.sleep(0.05)
        ahead = [u for batch in upstream.batches for u in batch if u != 1]
        assert ahead and all(u % 2 == 1 for u in ahead)
    asyncio.run(main())


def test_an_upstream_failure_reaches_the_client_and_the_next_ask_tries_again():
    async def main():
        b, loader, upstream = box(5)
        upstream.fail = True
        with pytest.raises(OSError):
            await loader.content(3)
        upstream.fail = False
        assert bytes(await loader.content(3)) == message(3)
    asyncio.run(main())
