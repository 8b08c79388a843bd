"""The serve process: its children, listeners and workers, started in order and stopped in reverse.

``app.open_gateway`` builds a ``Gateway`` from the home; ``run_until_signal`` runs it until
SIGTERM/SIGINT. The crypto workers and the delivery child start first: a listener is up only
when mail can be processed and delivered. ``jobs`` are the periodic upkeep the root chose (the
manifest fetch, the audit checkpoints), each a ``job(stop)`` coroutine run until the stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..audit import AuditLog
from ..authlimit import AuthGuard
from ..config import GatewayConfig
from ..delivery.pool import SessionPool
from ..delivery.worker import DeliveryWorker
from ..keys.store import KeyStore
from ..keys.wkd_server import WkdServer
from ..queue import Queue
from ..queue.retention import Retention
from ..smtp.server import SMTPServer
from .supervisor import stop_on_signals
from ..transform.pipeline import Pipeline
from .cpu import CpuPool
from .delivery import DeliveryProcess
from .health import Probe
from .monitor import MonitorServer

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    config: GatewayConfig
    queue: Queue
    audit: AuditLog
    keys: KeyStore
    pipeline: Pipeline
    servers: list[SMTPServer]
    workers: list[DeliveryWorker]
    engine: object
    wkd: WkdServer | None = None
    sessions: SessionPool | None = None
    cpu: CpuPool | None = None
    delivery: DeliveryProcess | None = None   # when the workers run in a child process
    retention: Retention | None = None        # the sweep of finished messages' metadata
    guard: AuthGuard | None = None  # the password checks of every listener (authlimit.py)
    jobs: list[Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    monitor: MonitorServer | None = None  # [listeners.metrics]: /metrics, /healthz, /readyz
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _workers: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> None:
        # the child processes first: a listener is up only when mail can be processed and delivered
        await asyncio.gather(*(c.start() for c in (self.cpu, self.delivery) if c is not None))
        for s in self.servers:
            await s.start()
        listeners = [f"{s.host}:{s.port}" for s in self.servers]
        if self.wkd is not None:
            try:
                await self.wkd.start()
                listeners.append(f"https://{self.wkd.host}:{self.wkd.port}")
            except OSError as e:  # mail keeps flowing: lookups of our users fall back to the domain key
                log.error("key directory cannot listen on %s:%d: %s", self.wkd.host, self.wkd.port,
                          e.strerror or e)
                self.audit.append("wkd-unavailable", listen=f"{self.wkd.host}:{self.wkd.port}",
                                  reason=e.strerror or type(e).__name__)
        self._stop = asyncio.Event()
        self._workers = [asyncio.create_task(w.run(self._stop)) for w in self.workers]
        self._tasks = list(self._workers)
        if self.retention is not None:
            self._tasks.append(asyncio.create_task(self.retention.run(self._stop)))
        self._tasks += [asyncio.create_task(job(self._stop)) for job in self.jobs]
        if self.monitor is not None and await self._start_monitor():
            listeners.append(f"http://{self.monitor.host}:{self.monitor.port}")
        self.audit.append("started", domains=list(self.config.domains), listeners=listeners)

    async def _start_monitor(self) -> bool:
        """The metrics listener; one that cannot listen is logged and audited, and mail keeps flowing."""
        at = f"{self.monitor.host}:{self.monitor.port}"
        try:
            await self.monitor.start()
        except OSError as e:
            log.error("metrics cannot listen on %s: %s", at, e.strerror or e)
            self.audit.append("metrics-unavailable", listen=at, reason=e.strerror or type(e).__name__)
            return False
        return True

    def process_probes(self) -> list[Probe]:
        """Readiness of the workers (procs/health.py): the crypto workers, and the delivery workers
        (a child process of their own, or tasks here)."""
        out = []
        if self.cpu is not None:
            why = self.cpu.problem()
            out.append(Probe("crypto workers", why is None, why or f"{len(self.cpu.pids)} running"))
        if self.delivery is not None:
            pid = self.delivery.supervisor.pid
            out.append(Probe("delivery workers", pid is not None, f"the delivery process {pid} is running"
                             if pid else "the delivery process is not running"))
        else:
            running = sum(1 for t in self._workers if not t.done())
            out.append(Probe("delivery workers", bool(running) or not self.workers,
                             f"{running} of {len(self.workers)} running"))
        return out

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        if self.wkd is not None:
            await self.wkd.stop()
        for s in self.servers:
            await s.stop()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.delivery is not None:
            await self.delivery.stop()
        if self.cpu is not None:
            await self.cpu.stop()
        if self.sessions is not None:
            await self.sessions.close()
        if self.guard is not None:
            self.guard.close()
        self.audit.append("stopped")
        self.engine.dispose()

    async def run_until_signal(self) -> None:
        await self.start()
        stop = stop_on_signals()
        log.info("securemail gateway for %s running", ", ".join(self.config.domains))
        await stop.wait()
        log.info("stopping")
        await self.stop()
