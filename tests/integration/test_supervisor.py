"""procs/supervisor.py with real child processes: ready handshake, restart with backoff, the
restart budget, and a clean stop (SIGTERM, then kill after the grace period)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from securemail.errors import ConfigError
from securemail.procs.supervisor import Restarts, Supervisor

pytestmark = pytest.mark.timeout(120)

FAST = Restarts(gap=0.05, most=0.4, budget=3, window=30.0)


def launcher(code: str, *, ready: bytes = b"ready", started: list | None = None):
    """Start ``python -c code``; it is ready when its first line is ``ready``."""
    async def launch() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                    stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != ready:
            await proc.wait()
            raise ConfigError("the child could not start")
        if started is not None:
            started.append(proc.pid)
        return proc
    return launch


LIVES = "import sys, time; print('ready', flush=True); time.sleep(60)"
DIES = "import sys; print('ready', flush=True); sys.exit(3)"


def test_a_child_that_never_becomes_ready_stops_the_start():
    sup = Supervisor("probe", launcher("print('no')"), restarts=FAST)
    with pytest.raises(ConfigError, match="could not start"):
        asyncio.run(sup.start())
    assert sup.starts == 0


def test_a_killed_child_is_started_again_and_stopped_with_sigterm():
    started: list[int] = []
    ended: list[int | None] = []

    async def scenario():
        sup = Supervisor("probe", launcher(LIVES, started=started), restarts=FAST, on_exit=ended.append)
        await sup.start()
        first = sup.pid
        sup.proc.kill()
        for _ in range(200):
            if sup.starts == 2 and sup.pid not in (None, first):
                break
            await asyncio.sleep(0.05)
        second = sup.pid
        code = await sup.stop()
        return first, second, code

    first, second, code = asyncio.run(scenario())
    assert started == [first, second] and first != second
    assert ended == [-signal.SIGKILL]          # the end it was not asked for, reported once
    assert code == -signal.SIGTERM             # stopped by its stop signal, not killed


def test_the_budget_spent_calls_give_up_and_the_waits_grow():
    gave_up = asyncio.Event()
    started: list[int] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        sup = Supervisor("probe", launcher(DIES, started=started), restarts=FAST,
                         give_up=gave_up.set)
        t0 = loop.time()
        await sup.start()
        await asyncio.wait_for(gave_up.wait(), 30)
        took = loop.time() - t0
        await sup.stop()
        return took

    took = asyncio.run(scenario())
    # the first start and one per end until more than 3 ends: 1 + 3 starts, waits 0.05+0.1+0.2
    assert len(started) == 1 + FAST.budget
    assert took >= 0.05 + 0.1 + 0.2


def test_without_give_up_the_supervisor_keeps_trying_at_the_longest_wait():
    started: list[int] = []

    async def scenario():
        sup = Supervisor("probe", launcher(DIES, started=started), restarts=FAST)
        await sup.start()
        await asyncio.sleep(0.05 + 0.1 + 0.2 + 0.4 * 3 + 0.5)
        await sup.stop()

    asyncio.run(scenario())
    assert len(started) >= 1 + FAST.budget + 1   # went on past the budget


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")

    async def scenario():
        sup = Supervisor("probe", launcher(stubborn), restarts=FAST, stop_seconds=0.5)
        await sup.start()
        return await sup.stop()

    assert asyncio.run(scenario()) == -signal.SIGKILL
