"""The delivery stage's child process, supervised from the serve process's event loop.

A serve process with more than one core runs its delivery workers in a child
(``python -m securemail.roles.delivery``) with its own engine and event loop:
claiming, sending and settling then cost the SMTP process's core nothing.
``DeliveryProcess`` starts the child through a ``Supervisor`` (procs/supervisor.py),
which starts it again if it dies (leases hand its claims to the next one),
and stops it with SIGTERM: the child finishes the deliveries in flight,
settles them, and exits. The child also exits when its stdin closes (the
serve process is gone).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from ..errors import ConfigError
from .supervisor import Restarts, Supervisor, reap

log = logging.getLogger(__name__)

START_SECONDS = 120.0    # for the child to build its workers and say it is ready
STOP_SECONDS = 90.0      # for the child to finish what it is sending (SMTP steps time out at 60 s)
READY = b"ready"         # the child's first line on stdout


class DeliveryProcess:
    """``command + [owner, log level]`` is the role's entry point (securemail/roles/delivery.py)."""

    def __init__(self, command: list[str], owner: str, *, restarts: Restarts = Restarts(),
                 metrics=None) -> None:
        self.command, self.owner = list(command), owner
        self.supervisor = Supervisor("delivery process", self._launch, restarts=restarts,
                                     stop_seconds=STOP_SECONDS, metrics=metrics, role="delivery")

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.supervisor.proc

    async def start(self) -> None:
        await self.supervisor.start()

    async def _launch(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.command, f"{self.owner}-{uuid.uuid4().hex[:6]}", str(logging.getLogger().getEffectiveLevel()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_SECONDS)
        except TimeoutError:
            line = b""
        if line.strip() != READY:
            if proc.returncode is None:
                proc.kill()
            await reap(proc)
            raise ConfigError("the delivery process could not start; see the log above")
        log.info("delivery process %d", proc.pid)
        return proc

    async def stop(self) -> None:
        await self.supervisor.stop()
