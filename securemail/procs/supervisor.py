"""One child process kept running: spawn, ready handshake, restart with backoff and a budget, clean stop.

The crypto workers (procs/cpu.py), the delivery child (procs/delivery.py) and the serve processes
of ``serve --processes N`` (procs/multi.py) are each one ``Supervisor``. What to run is handed in
as a value: ``launch`` starts the process, completes its ready handshake and returns it, or
raises ``SecureMailError`` after reaping a child that never became ready. The supervisor never
imports the composition root: the roles' entry points (securemail/roles/) sit above it.

The restart rule is the same for every child. The first end is answered with a new start after
``Restarts.gap`` seconds, each failed or repeated start doubles the wait up to ``Restarts.most``,
and a child that ran ``Restarts.window`` seconds without ending starts the count again. More than
``Restarts.budget`` ends within ``Restarts.window`` seconds spend the budget: ``give_up`` is
called (the serve parent stops every process and fails); without one, the supervisor keeps
trying at the longest wait, since the mail it would carry is answered 451 meanwhile, never lost.

With ``metrics`` (metrics.py), each new start after an end counts as a restart of ``role``, and
an ended child's live gauges are removed (its counters stay in the totals).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ..errors import SecureMailError

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

Launch = Callable[[], Awaitable[asyncio.subprocess.Process]]


@dataclass(frozen=True)
class Restarts:
    gap: float = 1.0       # seconds before the first new start
    most: float = 30.0     # the longest wait between two starts
    budget: int = 5        # ends within ``window`` before ``give_up``
    window: float = 60.0


class Supervisor:
    def __init__(self, name: str, launch: Launch, *, restarts: Restarts = Restarts(),
                 on_exit: Callable[[int | None], None] | None = None,
                 give_up: Callable[[], None] | None = None,
                 stop_signal: int = signal.SIGTERM, stop_seconds: float = 90.0,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None, role: str = "") -> None:
        self.name, self.launch, self.restarts = name, launch, restarts
        self.metrics, self.role = metrics, role or name
        self.on_exit, self.give_up = on_exit, give_up
        self.stop_signal, self.stop_seconds, self.clock = stop_signal, stop_seconds, clock
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0                # successful starts, the first one included
        self._ends: list[float] = []   # when the child ended unasked, within the window
        self._watch: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self) -> None:
        """The first start: a child that does not become ready stops the caller's start."""
        self.proc = await self.launch()
        self.starts += 1
        self._watch = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self._stopping:
            started = self.clock()
            code = await self.proc.wait()
            if self._stopping:
                return
            if self.on_exit is not None:
                self.on_exit(code)
            if self.metrics is not None:
                self.metrics.process_ended(self.proc.pid)
            now = self.clock()
            if now - started >= self.restarts.window:
                self._ends = []
            self._ends = [t for t in self._ends if now - t < self.restarts.window] + [now]
            log.error("%s %d ended (%s); starting it again", self.name, self.proc.pid, code)
            await self._start_again(self.restarts.gap * 2 ** (len(self._ends) - 1))

    async def _start_again(self, wait: float) -> None:
        while not self._stopping:
            if len(self._ends) > self.restarts.budget:
                log.error("%s ended %d times within %.0f s", self.name, len(self._ends), self.restarts.window)
                if self.give_up is not None:
                    self._stopping = True
                    self.give_up()
                    return
                wait = self.restarts.most
            await asyncio.sleep(min(wait, self.restarts.most))
            if self._stopping:
                return
            try:
                self.proc = await self.launch()
                self.starts += 1
                if self.metrics is not None:
                    self.metrics.restarted(self.role)
                return
            except SecureMailError as err:
                log.error("%s: %s; trying again", self.name, err.message)
                wait *= 2

    async def stop(self) -> int | None:
        """Ask the child to stop (``stop_signal``), kill it after ``stop_seconds``; its exit code."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                proc.send_signal(self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), self.stop_seconds)
            except TimeoutError:
                log.error("%s %d did not stop; killing it", self.name, proc.pid)
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        return proc.returncode if proc is not None else None


async def reap(proc: asyncio.subprocess.Process | None, seconds: float = 5.0) -> None:
    """Wait for a child that was told to go (or never became ready); kill it after ``seconds``."""
    if proc is None or proc.returncode is not None:
        return
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """``stop`` (or a new event), set at SIGTERM or SIGINT by the running loop: what a process's
    main waits on before it stops in order (the gateway, ``serve --processes``, the bridge)."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
