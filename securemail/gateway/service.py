"""securemail serve: build the gateway from its config, run listeners and delivery workers, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field

from ..audit import AuditLog
from ..config import GatewayConfig
from ..db import make_engine
from ..federation import ManifestSource
from ..delivery.pool import SessionPool
from ..delivery.worker import DeliveryWorker
from .delivery import DeliveryProcess, build_delivery
from ..home import Home
from ..keys.directory import Directory
from ..keys.publish import Nonces
from ..keys.store import KeyStore
from ..queue import Queue
from ..queue.retention import Retention
from ..schema import create_schema
from ..smtp.handler import GatewayHandler
from ..smtp.peercert import request_client_certificates
from ..smtp.authlimit import AuthGuard
from ..smtp.replies import AUTH_REVOKED
from ..smtp.server import SMTPServer, make_server
from .pipeline import Pipeline
from .cpu import CpuPool
from .runtime import MemberAddresses, make_stage, server_tls_context
from .users import Users
from .wkd_server import WkdServer

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
    guard: AuthGuard | None = None  # the password checks of every listener (smtp/authlimit.py)
    _tasks: list[asyncio.Task] = field(default_factory=list)

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
        self._tasks = [asyncio.create_task(w.run(self._stop)) for w in self.workers]
        if self.retention is not None:
            self._tasks.append(asyncio.create_task(self.retention.run(self._stop)))
        self.audit.append("started", domains=list(self.config.domains), listeners=listeners)

    async def stop(self) -> None:
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("securemail gateway for %s running", ", ".join(self.config.domains))
        await stop.wait()
        log.info("stopping")
        await self.stop()


def build(home: Home, *, clock=time.time, owner: str | None = None,
          reuse_port: bool = False, cpu_workers: int | None = None) -> Gateway:
    """The composition root of the gateway: config → every object, nothing global.

    ``reuse_port``: this is one of several serve processes sharing the listening
    ports (SO_REUSEPORT; the kernel spreads connections) and the queue.
    ``cpu_workers``: crypto worker processes (default: ``gateway.cpu_workers``);
    with an injected ``clock`` the stage always runs in-process.
    """
    config = GatewayConfig.load(home)
    # intake commits never pay for a SQLite checkpoint: the delivery workers run them (worker.py)
    engine = make_engine(config.database_url, wal_autocheckpoint=False)
    create_schema(engine, clock)  # every table, once; the crypto workers and delivery child use them
    audit = AuditLog(engine, clock)
    keys = KeyStore(engine, clock, audit=audit)
    queue = Queue(engine, clock, audit_log=audit)
    manifest = ManifestSource(config.federation_manifest)
    manifest()
    stage = make_stage(config, keys, manifest, clock)
    workers = config.crypto_workers(reuse_port) if cpu_workers is None else cpu_workers
    if clock is not time.time:  # a worker process cannot follow an injected clock (tests, proof)
        workers = 0
    pool = CpuPool(home.path, workers) if workers > 0 else None
    pipeline = Pipeline(config=config, stage=stage, queue=queue, audit=audit,
                        run_stage=pool.decide if pool else None)
    tls = server_tls_context(config)
    users = Users(config.passwords_file)
    guard = AuthGuard(users.check, config.auth_budget,
                      on_lock=lambda **fields: audit.append("auth-locked", **fields))
    servers = _smtp_servers(config, pipeline, tls, guard, MemberAddresses(manifest), clock, reuse_port,
                            users.known)
    owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    delivery, sessions, child = [], None, None
    if clock is time.time and config.separate_delivery(workers):
        child = DeliveryProcess(home.path, owner)
    else:
        delivery, sessions = build_delivery(config, queue=queue, keys=keys, manifest=manifest,
                                            transformer=stage.transformer, clock=clock, owner=owner)
    wkd, li = None, config.listener("wkd")
    if li is not None:
        wkd = WkdServer(li.host, li.port, tls, Directory(engine, keys, config.domains, clock=clock, audit=audit),
                        Nonces(engine), users.check, audit=audit, clock=clock, reuse_port=reuse_port,
                        guard=guard)
    return Gateway(config, queue, audit, keys, pipeline, servers, delivery, engine, wkd, sessions, pool,
                   child, Retention(queue, config.queue.retention, config.queue.purge_interval), guard=guard)


def _smtp_servers(config: GatewayConfig, pipeline: Pipeline, tls, guard: AuthGuard, members: MemberAddresses,
                  clock, reuse_port: bool, known=lambda user: True) -> list[SMTPServer]:
    """One SMTP server per listener: AUTH where the listener offers it ([listeners.*] auth); the
    reserved slots for its trusted networks and the manifest's member gateways."""
    # member gateways deliver to the relay listener and show their certificate there (smtp/peercert.py)
    relay_tls = request_client_certificates(server_tls_context(config))
    servers = []
    for li in config.listeners:
        if li.name == "wkd":
            continue
        handler = GatewayHandler(still_a_user(pipeline.rcpt_decider(li), known), pipeline.data_acceptor(li),
                                 clock=clock)
        servers.append(make_server(
            handler, li.host, li.port, tls_context=relay_tls if li.name == "relay" else tls,
            require_starttls=li.require_starttls,
            auth_required=li.auth_required, auth_guard=guard if li.auth else None,
            hostname=config.hostname, limits=config.limits, reuse_port=reuse_port,
            privileged=lambda ip, li=li: li.trusts(ip) or ip in members))
    return servers


def still_a_user(decide, known):
    """The RCPT decision, first refusing sessions authenticated as a user removed since (``known``:
    Users.known). A removed user's session keeps only the transaction whose recipients it already has."""
    def decide_rcpt(session, address: str):
        if session.auth_user and not known(session.auth_user):
            return AUTH_REVOKED
        return decide(session, address)
    return decide_rcpt
