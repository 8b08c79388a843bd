"""The delivery stage of a gateway: its workers, and a process of its own to run them in.

``build_delivery`` makes what delivers the queue (workers, next-hop session
pool, the pre-send key check of delivery/keycheck.py, the DSNs of
delivery/bounces.py). A serve process with more than one core runs it in a
child (``python -m securemail.gateway.delivery``) with its own
engine and event loop: claiming, sending and settling then cost the SMTP
process's core nothing. ``DeliveryProcess`` starts the child, starts it again
if it dies (leases hand its claims to the next one), and stops it with
SIGTERM: the child finishes the deliveries in flight, settles them, and exits.
The child also exits when its stdin closes (the serve process is gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from ..config import GatewayConfig
from ..delivery.bounces import Bounces
from ..delivery.keycheck import KeyCheck
from ..delivery.pool import SessionPool
from ..delivery.worker import DeliveryWorker
from ..errors import ConfigError
from ..federation import ManifestSource
from ..keys.store import KeyStore
from ..queue import Queue
from .transform import Transformer

log = logging.getLogger(__name__)

START_SECONDS = 120.0    # for the child to build its workers and say it is ready
STOP_SECONDS = 90.0      # for the child to finish what it is sending (SMTP steps time out at 60 s)
RESTART_GAP = 1.0


def build_delivery(config: GatewayConfig, *, queue: Queue, keys: KeyStore, manifest: ManifestSource,
                   transformer: Transformer, clock, owner: str) -> tuple[list[DeliveryWorker], SessionPool]:
    bounces = Bounces(config, queue, transformer, manifest)
    sessions = SessionPool()  # next-hop SMTP sessions reused across messages and workers
    workers = [DeliveryWorker.from_config(
        config, queue, owner=owner, clock=clock, audit_log=queue.audit_log, concurrency=config.workers,
        reporting_mta=config.domains[0], bounce_sender=bounces.send, deliver_smtp=sessions.deliver,
        pre_send=KeyCheck(keys, manifest, clock).veto, open_sealed=transformer.open_for_office)]
    return workers, sessions


class DeliveryProcess:
    """The delivery stage's child process, supervised from the serve process's event loop."""

    def __init__(self, home: Path, owner: str) -> None:
        self.home, self.owner = Path(home), owner
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "securemail.gateway.delivery", str(self.home),
            f"{self.owner}-{uuid.uuid4().hex[:6]}", str(logging.getLogger().getEffectiveLevel()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), START_SECONDS)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
            raise ConfigError("the delivery process could not start; see the log above")
        log.info("delivery process %d", self.proc.pid)

    async def _supervise(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("delivery process %d ended (%s); starting it again", self.proc.pid, code)
            await asyncio.sleep(max(0.0, RESTART_GAP - (time.monotonic() - started)))
            while not self._stopping:
                try:
                    await self._spawn()
                    break
                except ConfigError as err:
                    log.error("%s; trying again", err.message)
                    await asyncio.sleep(RESTART_GAP * 5)

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_SECONDS)
            except TimeoutError:
                log.error("delivery process %d did not stop; killing it (its leases expire)", proc.pid)
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            await asyncio.gather(self._watch, return_exceptions=True)


# --- the child process ---------------------------------------------------------------
def serve_child(home: str, owner: str, log_level: int) -> int:
    from .runtime import open_child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=f"%(levelname)s %(name)s[delivery {os.getpid()}]: %(message)s")
    parts = open_child(Path(home), wal_autocheckpoint=False)  # the workers checkpoint
    workers, sessions = build_delivery(parts.config, queue=parts.queue, keys=parts.keys,
                                       manifest=parts.manifest, transformer=parts.stage.transformer,
                                       clock=time.time, owner=owner)
    asyncio.run(_run(workers, sessions))
    parts.engine.dispose()
    return 0


async def _run(workers: list[DeliveryWorker], sessions: SessionPool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def parent_gone() -> None:  # stdin is a pipe from the serve process: EOF when it exits
        if not os.read(0, 4096):
            loop.remove_reader(0)
            stop.set()
    loop.add_reader(0, parent_gone)
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sessions.close()


if __name__ == "__main__":
    sys.exit(serve_child(sys.argv[1], sys.argv[2], int(sys.argv[3])))
