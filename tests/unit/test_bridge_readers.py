"""The bridge's reader processes (bridge/readers.py): answers in order, a failure for one message
only, a dead reader's work going to the others and then to the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest

from securemail.bridge.readers import Readers
from securemail.bridge.upstream import UpstreamError
from securemail.mail.read import Given


def work(given: Given) -> tuple[bytes, bytes]:
    raw = given.data   # a reader hands the message over (read.Given): nothing else holds it
    if raw == b"boom":
        raise ValueError("a bug on one message")
    return raw.upper(), str(os.getpid()).encode()


async def fallback(raw: bytes) -> tuple[bytes, bytes]:
    return raw.upper(), b"fallback"


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def started(fn=work, count: int = 2):
    """``count`` readers running ``fn``, stopped at the end of the block."""
    readers = Readers(fn, count, fallback=fallback)
    await readers.start()
    try:
        yield readers
    finally:
        await readers.stop()


def test_every_message_answered_by_the_readers_on_their_cores():
    async def main():
        async with started() as readers:
            pids = readers.pids
            items = [os.urandom(n) for n in (0, 1, 5000, 300_000, 2 << 20)] * 4
            got = await asyncio.gather(*(readers.show(i) for i in items))
            assert [g[0] for g in got] == [i.upper() for i in items]
            assert {int(g[1]) for g in got} == set(readers.pids) and os.getpid() not in readers.pids
        assert len(pids) == 2 and not any(os.path.exists(f"/proc/{p}") for p in pids)  # ended and reaped
    run(main())


def test_a_failing_message_fails_alone():
    async def main():
        async with started(count=1) as readers:
            results = await asyncio.gather(readers.show(b"a"), readers.show(b"boom"), readers.show(b"c"),
                                           return_exceptions=True)
            assert results[0] == (b"A", str(readers.pids[0]).encode()) and results[2][0] == b"C"
            assert isinstance(results[1], UpstreamError)
    run(main())


def test_a_dead_reader_leaves_the_work_to_the_others_then_to_the_fallback():
    async def main():
        async with started() as readers:
            first, second = readers.pids
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.3)
            assert readers.pids == [second]
            assert await readers.show(b"x") == (b"X", str(second).encode())
            os.kill(second, signal.SIGKILL)
            await asyncio.sleep(0.3)
            assert readers.pids == [] and await readers.show(b"y") == (b"Y", b"fallback")
    run(main())


def test_a_reader_dying_with_a_message_fails_that_message_with_a_temporary_error():
    def slow(raw: bytes) -> tuple[bytes, bytes]:
        os.kill(os.getpid(), signal.SIGKILL)
        return raw, b""

    async def main():
        async with started(slow, 1) as readers:
            with pytest.raises(UpstreamError):
                await asyncio.wait_for(readers.show(b"z"), 10)
    run(main())


def test_messages_in_flight_when_a_reader_dies_are_all_answered():
    async def main():
        async with started() as readers:
            items = [os.urandom(200_000) for _ in range(40)]
            tasks = [asyncio.ensure_future(readers.show(i)) for i in items]
            await asyncio.sleep(0)
            os.kill(readers.pids[0], signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            for item, got in zip(items, results):    # answered right, or told to ask again: none hangs
                assert (isinstance(got, tuple) and got[0] == item.upper()) or isinstance(got, UpstreamError)
            assert sum(isinstance(r, tuple) for r in results) >= len(items) // 2
            assert await readers.show(b"after") == (b"AFTER", str(readers.pids[0]).encode())
    run(main())


def test_a_reader_stopped_in_the_middle_of_a_message_ends_quietly(capfd):
    """At SIGTERM during a sync the readers are still reading ahead: the one whose answer finds the
    bridge gone ends without a traceback in the bridge's log (it wrote BrokenPipeError's)."""
    def slow(given: Given) -> tuple[bytes, bytes]:
        time.sleep(0.5)
        return given.data, b""

    async def main():
        readers = Readers(slow, 1, fallback=fallback)
        await readers.start()
        late = asyncio.ensure_future(readers.show(b"late"))
        await asyncio.sleep(0.1)   # the reader has it, and is working on it
        await readers.stop()
        with contextlib.suppress(UpstreamError):
            await asyncio.wait_for(late, 5)
    run(main())   # stop() waits for the reader to end (join)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
