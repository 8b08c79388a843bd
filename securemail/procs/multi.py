"""Several serve processes for several cores: the parent starts them, forwards SIGTERM, reports their end.

Each child is a complete gateway (listeners with SO_REUSEPORT, delivery
workers) on the same database; leases make their claims exclusive. The
parent only supervises, each child through a ``Supervisor`` (procs/supervisor.py):
a child that dies is started again with backoff; more than the restart budget
of ends within a minute, and the parent stops them all and fails. It exits 0
when every child stopped cleanly after SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os

from .supervisor import Restarts, Supervisor, stop_on_signals

log = logging.getLogger(__name__)


def serve_processes(command: list[str], n: int, env: dict[str, str], *,
                    restarts: Restarts = Restarts(), metrics=None) -> int:
    """Run ``n`` copies of ``command`` (with ``env`` added) until SIGTERM/SIGINT; the exit status.
    ``metrics``: the parent's (metrics.py), where the serve processes' restarts are counted."""
    return asyncio.run(_serve(list(command), n, {**os.environ, **env}, restarts, metrics))


async def _serve(command: list[str], n: int, env: dict[str, str], restarts: Restarts, metrics) -> int:
    stop = asyncio.Event()
    failed = False

    def give_up() -> None:
        nonlocal failed
        failed = True
        log.error("serve processes keep dying; stopping")
        stop.set()

    async def launch() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*command, env=env)

    children = [Supervisor(f"serve process {i}", launch, restarts=restarts, give_up=give_up,
                           metrics=metrics, role="serve") for i in range(n)]
    stop_on_signals(stop)
    for c in children:
        await c.start()
    log.info("securemail serve: %d processes %s", n, [c.pid for c in children])
    await stop.wait()
    codes = await asyncio.gather(*(c.stop() for c in children))
    return 0 if not failed and all(code == 0 for code in codes) else 1
