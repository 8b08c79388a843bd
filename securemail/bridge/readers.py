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
import contextlib
import gc
import logging
import multiprocessing
import signal
import socket
import struct
from typing import Awaitable, Callable

from ..mail.read import Given
from .upstream import UpstreamError

log = logging.getLogger(__name__)
_HEAD = struct.Struct("!QQB")   # lengths of the data and of its meta, status (0: done; 1: failed)
_JOINED = 64 << 10   # a message or answer up to this size goes in one send, its head joined to it
Work = Callable[[Given], "tuple[bytes, bytes]"]   # upstream message -> (message shown, its structure)


class _Slot:
    def __init__(self, process, sock: socket.socket) -> None:
        self.process, self.sock = process, sock
        self.pending: list[asyncio.Future] = []
        self.sending = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.alive, self.started = True, False


class Readers:
    """``count`` forked reader processes running ``work``; ``await show(raw)`` from the event loop.

    The sockets are used without asyncio streams: a message goes out from the caller's bytes
    (``sock_sendall``) and an answer comes into one buffer of its announced size
    (``sock_recv_into``), so a big one is neither copied into a transport buffer nor grown and
    copied again in a stream's."""

    def __init__(self, work: Work, count: int, *, fallback: Callable[[bytes], Awaitable[tuple[bytes, bytes]]],
                 after_fork: Callable[[], None] = lambda: None) -> None:
        self.fallback = fallback
        self._stopping = False
        context = multiprocessing.get_context("fork")
        self._slots: list[_Slot] = []
        gc.freeze()   # what exists now is the readers' for good: their collector need not walk it
        try:
            self._fork(work, count, context, after_fork)
        finally:
            gc.unfreeze()

    def _fork(self, work: Work, count: int, context, after_fork) -> None:
        for i in range(count):
            ours, theirs = socket.socketpair()
            process = context.Process(target=_serve, args=(work, theirs, ours, after_fork),
                                      name=f"securemail-bridge-reader-{i}", daemon=True)
            process.start()
            theirs.close()
            ours.setblocking(False)
            self._slots.append(_Slot(process, ours))

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.alive]

    async def start(self) -> None:
        for s in self._slots:
            s.started = True
            s.task = asyncio.ensure_future(self._replies(s))

    async def show(self, raw: bytes) -> tuple[bytes, bytes]:
        return await (await self.submit(raw))

    async def submit(self, raw: bytes) -> asyncio.Future:
        """Hand ``raw`` to a reader; the future of its answer. Once this returns, the reader has the
        message: a caller that lets go of it then does not hold a big one while it is decrypted."""
        alive = [s for s in self._slots if s.alive and s.started]
        if not alive:
            return asyncio.ensure_future(self.fallback(raw))
        s = min(alive, key=lambda slot: len(slot.pending))
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        async with s.sending:   # one message at a time on a socket, in the order of ``pending``
            if not s.alive:   # it ended while this waited for the socket: another, or the fallback
                return await self.submit(raw)
            s.pending.append(done)
            try:
                head = _HEAD.pack(len(raw), 0, 0)
                if len(raw) <= _JOINED:   # one send, one wake-up of the reader; a big one is not copied
                    await loop.sock_sendall(s.sock, head + raw)
                else:
                    await loop.sock_sendall(s.sock, head)
                    await loop.sock_sendall(s.sock, raw)
            except OSError:   # the reader is gone: _replies fails what it held, this one included
                if not s.alive and not done.done():
                    done.set_exception(UpstreamError("a reader process ended; ask again"))
        return done

    async def _replies(self, s: _Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                size, meta_size, status = _HEAD.unpack(await _receive(loop, s.sock, _HEAD.size))
                if size + meta_size <= _JOINED:   # read at once (a small answer was sent at once)
                    both = await _receive(loop, s.sock, size + meta_size)
                    data, meta = both[:size], both[size:]
                    del both
                else:
                    data = await _receive(loop, s.sock, size)
                    meta = await _receive(loop, s.sock, meta_size)
                done = s.pending.pop(0)
                if done.done():
                    continue
                if status == 0:
                    done.set_result((data, meta))
                else:
                    done.set_exception(UpstreamError("the message could not be shown; ask again"))
                del data, meta
        except (ConnectionError, OSError):
            pass
        s.alive = False
        for done in s.pending:
            if not done.done():
                done.set_exception(UpstreamError("a reader process ended; ask again"))
        s.pending.clear()
        if not self._stopping:   # at stop the bridge itself ends them
            log.warning("bridge reader %s ended (exit %s)", s.process.pid, s.process.exitcode)

    async def stop(self) -> None:
        self._stopping = True
        for s in self._slots:
            with contextlib.suppress(OSError):
                s.sock.shutdown(socket.SHUT_RDWR)   # the reader reads EOF and exits
        await asyncio.gather(*(s.task for s in self._slots if s.task), return_exceptions=True)
        loop = asyncio.get_running_loop()
        for s in self._slots:
            s.sock.close()
            await loop.run_in_executor(None, s.process.join, 5)
            if s.process.is_alive():
                s.process.kill()


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytearray:
    """Exactly ``n`` bytes from ``sock``, into one buffer (pymap reads a message from a bytearray
    as from bytes); ConnectionError at end of stream."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if k == 0:
            raise ConnectionError("reader closed its socket")
        got += k
    del view
    return buf


# --- the reader process ------------------------------------------------------------------
def _serve(work: Work, sock: socket.socket, parents: socket.socket,
           after_fork: Callable[[], None]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parents.close()  # the parent's end: EOF here when the bridge goes
    after_fork()
    incoming = sock.makefile("rb")   # read(n) of a big message fills one bytes object, no second copy
    while True:
        head = incoming.read(_HEAD.size)
        raw = _message(incoming, _HEAD.unpack(head)[0]) if len(head) == _HEAD.size else None
        if raw is None:
            return
        given = Given(raw)   # handed over: the work lets the message go as soon as it can
        del raw
        try:
            (shown, meta), status = work(given), 0
        except Exception:  # noqa: BLE001 - one message's failure is answered, the reader goes on
            log.exception("bridge reader failed on a message")
            shown, meta, status = b"", b"", 1
        del given
        head = _HEAD.pack(len(shown), len(meta), status)
        try:
            if len(shown) + len(meta) <= _JOINED:
                sock.sendall(head + shown + meta)
            else:
                sock.sendall(head)
                sock.sendall(shown)
                sock.sendall(meta)
        except OSError:   # the bridge stopped (or died) while this was read: nobody to answer
            return
        del shown, meta


def _message(incoming, size: int) -> bytes | bytearray | None:
    """The next message from the serve process (None at end of stream). A big one comes into a
    bytearray: handed over (read.Given), it is decoded, decrypted and shown over its own memory."""
    if size <= _JOINED:
        raw = incoming.read(size)
        return raw if len(raw) == size else None
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = incoming.readinto(view[got:])
        if not n:
            return None
        got += n
    view.release()
    return buf
