"""Crypto worker processes: the CPU-bound stage of the DATA path on every core.

One serve process runs the event loop (SMTP in, queue, delivery) on one core;
Python's GIL keeps it there. ``CpuPool`` runs ``CryptoStage.decide`` (facts,
policy, OpenPGP, DKIM) in ``cpu_workers`` child processes
(``python -m securemail.roles.crypto``). Each builds its own stage from the same
home (config, key store, manifest, unlocked domain keys, DKIM keys), so nothing
secret crosses between processes: the envelope goes in, the ``Decision`` (the
messages to queue, or the refusal) comes out, and the serve process commits it
with the others of its group commit: one way to enqueue.

Each child talks to the event loop over its own socketpair: length-prefixed
pickles, answered in order. No thread sits between the loop and a child (a
thread hop per message cost more CPU than the pickling). A message goes to the
child with the fewest in flight.

A child that dies (killed, out of memory) fails only its messages in flight,
with 451 (the client keeps them and retries), and is started again by its
``Supervisor`` (procs/supervisor.py: backoff and a restart budget). Children
ignore SIGINT, so Ctrl-C stops the gateway in order, and exit when the socket
closes (the serve process stopped or died).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from dataclasses import replace

from ..envelope import Envelope
from ..errors import ConfigError, SecureMailError, TemporaryFailure
from ..transform.stage import CryptoStage, Decision
from .supervisor import Restarts, Supervisor, reap

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!Q")
START_SECONDS = 120.0        # for a child to build its stage and say it is ready
CHUNK = 1 << 20              # a message's bytes go to a worker in pieces of this size


class _Slot:
    """One crypto worker: its supervisor, its socket and what was sent to it, in order."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.supervisor: Supervisor | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[asyncio.Future] = []
        self.reader_task: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.alive = False


class CpuPool:
    """``workers`` crypto worker processes, each started by ``command + [fd, log level]`` (the role's
    entry point, securemail/roles/crypto.py, handed in by the composition root)."""

    def __init__(self, command: list[str], workers: int, *, restarts: Restarts = Restarts(),
                 metrics=None) -> None:
        self.command, self.workers, self.restarts = list(command), workers, restarts
        self.metrics = metrics  # restarts counted, ended workers' live gauges removed (metrics.py)
        self._slots = [_Slot(i) for i in range(workers)]
        self._stopping = False

    @property
    def pids(self) -> set[int]:
        return {s.supervisor.pid for s in self._slots
                if s.alive and s.supervisor is not None and s.supervisor.pid is not None}

    async def start(self) -> None:
        """Start every child and wait until each has built its stage (about a second each)."""
        for s in self._slots:
            s.supervisor = Supervisor(f"crypto worker {s.index}", lambda s=s: self._launch(s),
                                      restarts=self.restarts, on_exit=lambda code, s=s: self._ended(s),
                                      stop_seconds=5.0, metrics=self.metrics, role="crypto")
        await asyncio.gather(*(s.supervisor.start() for s in self._slots))
        log.info("%d crypto worker processes: %s", self.workers, sorted(self.pids))

    async def _launch(self, s: _Slot) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, str(theirs.fileno()), str(logging.getLogger().getEffectiveLevel()),
                pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        try:
            ok, value = await asyncio.wait_for(_read(reader), START_SECONDS)
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, pickle.PickleError):
            ok, value = False, "the process ended before it was ready"
        if not ok:
            writer.close()
            await reap(proc)
            raise ConfigError(f"crypto worker process could not start: {value}")
        s.writer, s.alive = writer, True
        s.reader_task = asyncio.create_task(self._replies(s, reader))
        return proc

    def problem(self) -> str | None:
        """Why the pool cannot take mail now (no worker running), or None (``/readyz``)."""
        running = sum(1 for s in self._slots if s.alive)
        return None if running else f"none of the {self.workers} crypto workers is running"

    async def decide(self, env: Envelope, listener_name: str) -> Decision:
        live = [s for s in self._slots if s.alive]
        if not live:
            raise TemporaryFailure(detail="no crypto worker process running")
        s = min(live, key=lambda x: (x.lock.locked(), len(x.pending)))
        fut = asyncio.get_running_loop().create_future()
        head = pickle.dumps((replace(env, data=b""), listener_name, len(env.data)),
                            protocol=pickle.HIGHEST_PROTOCOL)
        async with s.lock:  # one request's bytes at a time on this socket, in the order of pending
            if not s.alive:
                raise TemporaryFailure(detail="crypto worker process ended")
            s.pending.append(fut)
            s.writer.write(_HEAD.pack(len(head)) + head)
            if len(env.data) <= CHUNK:
                s.writer.write(env.data)
            else:  # a big message goes in pieces, never a second whole copy in the transport's buffer
                view = memoryview(env.data)
                for i in range(0, len(view), CHUNK):
                    s.writer.write(view[i:i + CHUNK])
                    await s.writer.drain()
        ok, value = await fut
        if ok:
            return value
        raise value

    async def _replies(self, s: _Slot, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await _read(reader)
                fut = s.pending.pop(0)
                if not fut.done():
                    fut.set_result(reply)
        except (OSError, EOFError, IndexError, asyncio.IncompleteReadError, pickle.PickleError) as err:
            if not self._stopping:
                log.error("crypto worker %d: its socket ended (%r); its %d message(s) get 451",
                          s.index, err, len(s.pending))
        self._ended(s)

    def _ended(self, s: _Slot) -> None:
        """The child or its socket ended: the messages in flight get 451 (the client retries)."""
        s.alive = False
        if s.writer is not None:
            s.writer.close()
        for fut in s.pending:
            if not fut.done():
                fut.set_result((False, TemporaryFailure(detail="crypto worker process ended")))
        s.pending = []

    async def stop(self) -> None:
        self._stopping = True
        for s in self._slots:
            if s.writer is not None:
                s.writer.close()  # the child reads EOF and exits
        await asyncio.gather(*(s.reader_task for s in self._slots if s.reader_task),
                             return_exceptions=True)
        await asyncio.gather(*(s.supervisor.stop() for s in self._slots if s.supervisor),
                             return_exceptions=True)


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


def ready(sock: socket.socket, ok: bool, value) -> None:
    """The child's handshake: (True, pid) when its stage is built, else (False, why)."""
    _send(sock, (ok, value))


def serve_requests(stage: CryptoStage, sock: socket.socket) -> int:
    """The child's loop: one envelope in, its ``Decision`` (or the error) out, until the socket closes."""
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
            reply = (True, stage.decide(env, listener_name))
        except SecureMailError as err:
            reply = (False, err)
        except Exception:  # noqa: BLE001 - a bug in one message answers 451 for it, not for the rest
            log.exception("crypto stage failed")
            reply = (False, TemporaryFailure(detail="crypto stage failed"))
        del env
        _send(sock, reply)
