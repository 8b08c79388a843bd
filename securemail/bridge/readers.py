"""Reader processes: the bridge decrypts on every core, not on the one its event loop holds.

Decrypting and checking a message is CPU work in Python: in threads, the GIL keeps it on one
core, beside the event loop that serves the clients. ``Readers`` forks ``count`` processes when
the bridge is built, after the owner's secret keys are unlocked and before any thread or listener
exists. Each inherits the unlocked keys in its memory (nothing secret crosses a pipe or touches
the disk), opens its own database connections (``after_fork``), and answers, over its own
socketpair, one upstream message in, ``work``'s answer out, in order: the message to show
(``view.Viewer.show``) and its MIME structure as pymap records it (loader.py), so that neither the
decryption nor the line-by-line parse of a big message holds the event loop's core.

A message goes to the reader with the fewest in flight. A reader that dies fails only the messages
it held (the client's command gets a temporary NO and asks again) and is not replaced: the next
messages go to the others, or, when none is left, to ``fallback`` (the same ``show`` in a
thread of the bridge). Readers ignore SIGINT and exit when their socket closes.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import struct
from typing import Awaitable, Callable

from .upstream import UpstreamError

log = logging.getLogger(__name__)
_HEAD = struct.Struct("!QQB")   # lengths of the data and of its meta, status (0: done; 1: failed)
Work = Callable[[bytes], "tuple[bytes, bytes]"]   # upstream message -> (message shown, its structure)


class _Slot:
    def __init__(self, process, sock: socket.socket) -> None:
        self.process, self.sock = process, sock
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[asyncio.Future] = []
        self.task: asyncio.Task | None = None
        self.alive = True


class Readers:
    """``count`` forked reader processes running ``work``; ``await show(raw)`` from the event loop."""

    def __init__(self, work: Work, count: int, *, fallback: Callable[[bytes], Awaitable[tuple[bytes, bytes]]],
                 after_fork: Callable[[], None] = lambda: None) -> None:
        self.fallback = fallback
        context = multiprocessing.get_context("fork")
        self._slots: list[_Slot] = []
        for i in range(count):
            ours, theirs = socket.socketpair()
            process = context.Process(target=_serve, args=(work, theirs, ours, after_fork),
                                      name=f"securemail-bridge-reader-{i}", daemon=True)
            process.start()
            theirs.close()
            self._slots.append(_Slot(process, ours))

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.alive]

    async def start(self) -> None:
        for s in self._slots:
            reader, s.writer = await asyncio.open_connection(sock=s.sock)
            s.task = asyncio.ensure_future(self._replies(s, reader))

    async def show(self, raw: bytes) -> tuple[bytes, bytes]:
        return await (await self.submit(raw))

    async def submit(self, raw: bytes) -> asyncio.Future:
        """Hand ``raw`` to a reader; the future of its answer. Once this returns, the reader has the
        message: a caller that lets go of it then does not hold a big one while it is decrypted."""
        alive = [s for s in self._slots if s.alive and s.writer is not None]
        if not alive:
            return asyncio.ensure_future(self.fallback(raw))
        s = min(alive, key=lambda slot: len(slot.pending))
        done = asyncio.get_running_loop().create_future()
        s.pending.append(done)
        s.writer.write(_HEAD.pack(len(raw), 0, 0))
        s.writer.write(raw)
        del raw
        await s.writer.drain()
        return done

    async def _replies(self, s: _Slot, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size, meta_size, status = _HEAD.unpack(await reader.readexactly(_HEAD.size))
                data = await reader.readexactly(size)
                meta = await reader.readexactly(meta_size)
                done = s.pending.pop(0)
                if done.done():
                    continue
                if status == 0:
                    done.set_result((data, meta))
                else:
                    done.set_exception(UpstreamError("the message could not be shown; ask again"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        s.alive = False
        for done in s.pending:
            if not done.done():
                done.set_exception(UpstreamError("a reader process ended; ask again"))
        s.pending.clear()
        log.warning("bridge reader %s ended (exit %s)", s.process.pid, s.process.exitcode)

    async def stop(self) -> None:
        for s in self._slots:
            if s.writer is not None:
                s.writer.close()
            else:
                s.sock.close()
        await asyncio.gather(*(s.task for s in self._slots if s.task), return_exceptions=True)
        loop = asyncio.get_running_loop()
        for s in self._slots:
            await loop.run_in_executor(None, s.process.join, 5)
            if s.process.is_alive():
                s.process.kill()


# --- the reader process ------------------------------------------------------------------
def _serve(work: Work, sock: socket.socket, parents: socket.socket,
           after_fork: Callable[[], None]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parents.close()  # the parent's end: EOF here when the bridge goes
    after_fork()
    while True:
        head = _recv_exactly(sock, _HEAD.size)
        raw = head and _recv_exactly(sock, _HEAD.unpack(head)[0])  # a request has no meta
        if raw is None or head is None:
            return
        try:
            (shown, meta), status = work(raw), 0
        except Exception:  # noqa: BLE001 - one message's failure is answered, the reader goes on
            log.exception("bridge reader failed on a message")
            shown, meta, status = b"", b"", 1
        del raw
        sock.sendall(_HEAD.pack(len(shown), len(meta), status))
        sock.sendall(shown)
        sock.sendall(meta)
        del shown, meta


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    data = bytes(buf)
    del buf, view
    return data
