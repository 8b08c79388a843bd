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
from ..db import create_schema, make_engine
from ..delivery.pool import SessionPool
from ..delivery.worker import DeliveryWorker
from ..home import Home
from ..keys.directory import Directory
from ..keys.publish import Nonces
from ..keys.store import KeyStore
from ..queue import Queue
from ..smtp.handler import GatewayHandler
from ..smtp.server import Limits, SMTPServer, make_server
from ..delivery.hops import maildir_hop, relay_hop, smtp_hop
from ..policy.address import domain_of
from ..policy.encryption import EncryptionCheck
from ..policy.facts import Facts, Headers
from .pipeline import Pipeline
from .cpu import CpuPool
from .runtime import ManifestSource, make_stage, server_tls_context
from .transform import Transformer
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
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> None:
        if self.cpu is not None:  # before the listeners: the first message must not wait for them
            await self.cpu.start()
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
        self.audit.append("started", domains=list(self.config.domains), listeners=listeners)

    async def stop(self) -> None:
        if self.wkd is not None:
            await self.wkd.stop()
        for s in self.servers:
            await s.stop()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cpu is not None:
            await self.cpu.stop()
        if self.sessions is not None:
            await self.sessions.close()
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
    engine = make_engine(config.database_url)
    create_schema(engine)
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
    lim = config.limits
    servers = []
    for li in config.listeners:
        if li.name == "wkd":
            continue
        handler = GatewayHandler(pipeline.rcpt_decider(li), pipeline.data_acceptor(li), clock=clock)
        servers.append(make_server(
            handler, li.host, li.port, tls_context=tls, require_starttls=li.require_starttls,
            auth_required=li.auth_required, authenticator=users.check if (li.auth_required or users.names()) else None,
            hostname=config.hostname,
            limits=Limits(max_message_size=lim.message_size, max_recipients=lim.recipients,
                          max_connections=lim.connections, max_connections_per_ip=lim.connections_per_ip,
                          idle_timeout=lim.command_timeout), reuse_port=reuse_port))
    owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    bounces = Bounces(config, queue, stage.transformer, manifest)
    sessions = SessionPool()  # next-hop SMTP sessions reused across messages and workers
    delivery = [DeliveryWorker.from_config(
        config, queue, owner=owner, clock=clock, audit_log=audit, concurrency=config.workers,
        reporting_mta=config.domains[0], bounce_sender=bounces.send, deliver_smtp=sessions.deliver,
        pre_send=KeyCheck(keys, manifest, clock).veto)]
    wkd, li = None, config.listener("wkd")
    if li is not None:
        wkd = WkdServer(li.host, li.port, tls, Directory(engine, keys, config.domains, clock=clock, audit=audit),
                        Nonces(engine), users.check, audit=audit, clock=clock, reuse_port=reuse_port)
    return Gateway(config, queue, audit, keys, pipeline, servers, delivery, engine, wkd, sessions, pool)


class KeyCheck:
    """Before sending to a member: the recipient's key (or its domain's) must still be valid."""

    def __init__(self, keys: KeyStore, manifest: ManifestSource, clock) -> None:
        self.keys, self.manifest, self.clock = keys, manifest, clock
        self._known: dict[str, tuple[tuple, list]] = {}  # address -> (store generation, keys)

    def veto(self, claim) -> str | None:
        if not claim.next_hop.startswith("smtp:"):
            return None
        now = self.clock()
        gen = self.keys.generation()
        hit = self._known.get(claim.recipient)
        if hit is None or hit[0] != gen:
            if len(self._known) > 10_000:
                self._known.clear()
            hit = self._known[claim.recipient] = (gen, self.keys.find(claim.recipient))
        known = hit[1]
        if known:
            if any(k.status.encryption_keys(now) for k in known):
                return None
            return "the recipient's key was revoked or expired while the message waited"
        key = self.manifest.member_key(domain_of(claim.recipient) or "")
        if key is None or not key.status.encryption_keys(now):
            return "the recipient domain's key was revoked or expired while the message waited"
        return None


class Bounces:
    """Queues DSNs with the null sender: locally, or encrypted and signed to a member domain."""

    def __init__(self, config: GatewayConfig, queue: Queue, transformer: Transformer,
                 manifest: ManifestSource) -> None:
        self.config, self.queue, self.transformer, self.manifest = config, queue, transformer, manifest

    def send(self, dsn: bytes, rcpt: str) -> None:
        domain = domain_of(rcpt) or ""
        body = dsn
        if self.config.serves(domain):
            hop = (relay_hop(*self.config.relay_to) if self.config.local_delivery == "relay"
                   else maildir_hop(rcpt))
        elif self.manifest() is not None and self.manifest().is_member(domain):
            member = self.manifest().member(domain)
            own = self.config.domains[0]
            facts = bounce_facts(own, rcpt)
            body, _ = self.transformer.outbound(dsn, facts, domain, [rcpt])
            hop = smtp_hop(member.gateway[0], member.gateway[1], member.tls_pin)
        elif self.config.relay_to is not None and self.config.non_member_policy == "allow-plain":
            hop = relay_hop(*self.config.relay_to)
        else:
            log.warning("DSN for a non-member address has no route; kept as bounced only")
            self.queue.audit_log and self.queue.audit_log.append("dsn_unroutable", rcpt_domain=domain)
            return
        self.queue.enqueue("", [(rcpt, hop)], body, meta={"route": "dsn"},
                           audit=("dsn_queued", {"rcpt_domain": domain}))


def bounce_facts(own_domain: str, rcpt: str) -> Facts:
    """What the crypto stage needs to know about a DSN we wrote ourselves."""
    sender = f"MAILER-DAEMON@{own_domain}"
    return Facts(origin="office", listener="internal", tls=True, auth_user=None, mail_from="",
                 sender_domain=None, sender_class=None,
                 headers=Headers((sender,), 0), recipients={rcpt: "member"},
                 encryption=EncryptionCheck(False, "none", "ours"), from_class="own")
