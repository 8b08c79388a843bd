"""Crypto worker processes: the CPU-bound stage of the DATA path on every core.

One serve process runs the event loop (SMTP in, queue, delivery) on one core;
Python's GIL keeps it there. ``CpuPool`` runs ``CryptoStage.decide`` (facts,
policy, OpenPGP, DKIM) in ``cpu_workers`` child processes
(``python -m securemail.gateway.cpu``). Each builds its own stage from the same
home (config, key store, manifest, unlocked domain keys, DKIM keys), so nothing
secret crosses between processes: the envelope goes in, the queue items (or the
refusal) come out.

Each child talks to the event loop over its own socketpair: length-prefixed
pickles, answered in order. No thread sits between the loop and a child (a
thread hop per message cost more CPU than the pickling). A message goes to the
child with the fewest in flight.

A child that dies (killed, out of memory) fails only its messages in flight,
with 451 (the client keeps them and retries), and is started again. Children
ignore SIGINT, so Ctrl-C stops the gateway in order, and exit when the socket
closes (the serve process stopped or died).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..envelope import Envelope
from ..errors import ConfigError, SecureMailError, TemporaryFailure
from .runtime import open_child
from .stage import CryptoStage, Decision, queue_entries

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!Q")
START_SECONDS = 120.0        # for a child to build its stage and say it is ready
RESTART_GAP = 1.0            # seconds between two starts of the same slot
CHUNK = 1 << 20              # a message's bytes go to a worker in pieces of this size
STORE_IN_WORKER = 1 << 20    # bigger messages are committed by the worker: their bodies never come back


class _Worker:
    """One child process and what was sent to it, in order."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[asyncio.Future] = []
        self.reader_task: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.alive = False
        self.started_at = 0.0


class CpuPool:
    def __init__(self, home: Path, workers: int) -> None:
        self.home, self.workers = Path(home), workers
        self._slots = [_Worker(i) for i in range(workers)]
        self._stopping = False

    @property
    def pids(self) -> set[int]:
        return {w.proc.pid for w in self._slots if w.proc is not None and w.alive}

    async def start(self) -> None:
        """Start every child and wait until each has built its stage (about a second each)."""
        await asyncio.gather(*(self._spawn(w) for w in self._slots))
        log.info("%d crypto worker processes: %s", self.workers, sorted(self.pids))

    async def _spawn(self, w: _Worker) -> None:
        w.started_at = time.monotonic()
        ours, theirs = socket.socketpair()
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "securemail.gateway.cpu", str(self.home), str(theirs.fileno()),
                str(logging.getLogger().getEffectiveLevel()), pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        reader, w.writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        try:
            ok, value = await asyncio.wait_for(_read(reader), START_SECONDS)
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, pickle.PickleError):
            ok, value = False, "the process ended before it was ready"
        if not ok:
            await self._reap(w)
            raise ConfigError(f"crypto worker process could not start: {value}")
        w.alive = True
        w.reader_task = asyncio.create_task(self._replies(w, reader))

    async def decide(self, env: Envelope, listener_name: str) -> Decision:
        live = [w for w in self._slots if w.alive]
        if not live:
            raise TemporaryFailure(detail="no crypto worker process running")
        w = min(live, key=lambda x: (x.lock.locked(), len(x.pending)))
        fut = asyncio.get_running_loop().create_future()
        head = pickle.dumps((replace(env, data=b""), listener_name, len(env.data)),
                            protocol=pickle.HIGHEST_PROTOCOL)
        async with w.lock:  # one request's bytes at a time on this socket, in the order of pending
            if not w.alive:
                raise TemporaryFailure(detail="crypto worker process ended")
            w.pending.append(fut)
            w.writer.write(_HEAD.pack(len(head)) + head)
            if len(env.data) <= CHUNK:
                w.writer.write(env.data)
            else:  # a big message goes in pieces, never a second whole copy in the transport's buffer
                view = memoryview(env.data)
                for i in range(0, len(view), CHUNK):
                    w.writer.write(view[i:i + CHUNK])
                    await w.writer.drain()
        ok, value = await fut
        if ok:
            return value
        raise value

    async def _replies(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await _read(reader)
                fut = w.pending.pop(0)
                if not fut.done():
                    fut.set_result(reply)
        except (OSError, EOFError, IndexError, asyncio.IncompleteReadError, pickle.PickleError) as err:
            if not self._stopping:
                log.error("crypto worker process %s ended (%r); its %d message(s) get 451",
                          w.proc.pid if w.proc else "?", err, len(w.pending))
        w.alive = False
        for fut in w.pending:
            if not fut.done():
                fut.set_result((False, TemporaryFailure(detail="crypto worker process ended")))
        w.pending = []
        await self._reap(w)
        if not self._stopping:
            asyncio.get_running_loop().create_task(self._restart(w))

    async def _restart(self, w: _Worker) -> None:
        await asyncio.sleep(max(0.0, RESTART_GAP - (time.monotonic() - w.started_at)))
        while not self._stopping and not w.alive:
            try:
                await self._spawn(w)
            except SecureMailError as err:
                log.error("%s; trying again", err.message)
                await asyncio.sleep(RESTART_GAP * 5)

    async def _reap(self, w: _Worker) -> None:
        if w.writer is not None:
            w.writer.close()
        if w.proc is not None and w.proc.returncode is None:
            try:
                await asyncio.wait_for(w.proc.wait(), 5)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        for w in self._slots:
            if w.writer is not None:
                w.writer.close()  # the child reads EOF and exits
        await asyncio.gather(*(w.reader_task for w in self._slots if w.reader_task),
                             return_exceptions=True)
        await asyncio.gather(*(self._reap(w) for w in self._slots), return_exceptions=True)


async def _read(reader: asyncio.StreamReader):
    (n,) = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    return pickle.loads(await reader.readexactly(n))


# --- the child process ---------------------------------------------------------------
def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _send(sock: socket.socket, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEAD.pack(len(data))
    if len(data) < 65536:
        sock.sendall(head + data)  # one send for a small reply
    else:
        sock.sendall(head)  # no joined copy of a big one
        sock.sendall(data)


def _handle(stage: CryptoStage, queue, env: Envelope, listener_name: str) -> Decision:
    d = stage.decide(env, listener_name)
    if d.verdict is None and d.items and len(env.data) > STORE_IN_WORKER:
        ids = queue.enqueue_many(queue_entries(d, env))  # committed here: 250 still waits for it
        d = replace(d, items=[], queued=ids)
    return d


def serve_child(home: str, fd: int, log_level: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=f"%(levelname)s %(name)s[cpu {os.getpid()}]: %(message)s")
    sock = socket.socket(fileno=fd)
    try:
        parts = open_child(Path(home))
    except SecureMailError as err:
        _send(sock, (False, err.message))
        return 1
    except Exception as err:  # noqa: BLE001 - reported to the parent, which refuses to start
        log.exception("crypto worker could not build its stage")
        _send(sock, (False, type(err).__name__))
        return 1
    _send(sock, (True, os.getpid()))
    while True:
        head = _recv_exactly(sock, _HEAD.size)
        meta = head and _recv_exactly(sock, _HEAD.unpack(head)[0])
        if not meta:
            return 0
        env, listener_name, size = pickle.loads(meta)
        data = _recv_exactly(sock, size)
        if data is None:
            return 0
        env = replace(env, data=data)
        del data
        try:
            reply = (True, _handle(parts.stage, parts.queue, env, listener_name))
        except SecureMailError as err:
            reply = (False, err)
        except Exception:  # noqa: BLE001 - a bug in one message answers 451 for it, not for the rest
            log.exception("crypto stage failed")
            reply = (False, TemporaryFailure(detail="crypto stage failed"))
        del env
        _send(sock, reply)


if __name__ == "__main__":
    sys.exit(serve_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
