"""The serve process's objects (``open_gateway``), its crypto stage (``make_stage``) and delivery
workers (``build_delivery``).

open_gateway and build_delivery import the serve process's parts where they build them: the
listeners (aiosmtpd), the key directory (aiohttp) and the delivery client (aiosmtplib) cost a
process about 15 MiB, and a crypto worker (open_child("crypto")) needs none of them. These are
imports for load cost, not around a circle: tests/unit/test_import_graph.py counts them too.
"""

from __future__ import annotations

import functools
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..audit import AuditLog
from ..config import GatewayConfig
from ..crypto.dkim_signing import dkim_signers
from ..db import make_engine
from ..errors import ConfigError, KeyNotFound
from ..federation import normalize_fpr
from ..manifest_source import ManifestSource
from ..home import Home
from ..keys.locate import Locator
from ..keys.store import KeyStore
from ..queue import Queue
from ..rotation import DkimSigning, DomainKeys, OwnKeys, Rotation
from ..transform.routes import Transformer
from ..transform.stage import CryptoStage

from .home import Core, prepare_schema
from .observe import known_domains, monitor, open_metrics

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..checkpoint import Checkpointer
    from ..delivery.pool import SessionPool
    from ..delivery.worker import DeliveryWorker
    from ..procs.gateway import Gateway
    from ..smtp.server import SMTPServer
    from ..transform.pipeline import Pipeline


def role_command(role: str, home: Path) -> list[str]:
    """How a child process of ``role`` is started: its entry point in securemail/roles/."""
    return [sys.executable, "-m", f"securemail.roles.{role}", str(home)]


def open_gateway(home: Home, *, clock=time.time, owner: str | None = None,
          reuse_port: bool = False, cpu_workers: int | None = None) -> Gateway:
    """The gateway: config → every object, nothing global. ``reuse_port``: one of several serve
    processes sharing the ports (SO_REUSEPORT) and the queue. ``cpu_workers``: crypto worker
    processes (default ``gateway.cpu_workers``); with an injected ``clock``, the stage runs in-process."""
    from ..authlimit import AuthGuard
    from ..crypto.tls import switching_context
    from ..procs.cpu import CpuPool
    from ..procs.delivery import DeliveryProcess
    from ..procs.gateway import Gateway
    from ..queue.retention import Retention
    from ..smtp.members import MemberAddresses
    from ..transform.pipeline import Pipeline
    from ..users import Users
    config = GatewayConfig.load(home)
    # intake commits never pay for a SQLite checkpoint: the delivery workers run them (worker.py)
    engine = make_engine(config.database_url, wal_autocheckpoint=False)
    prepare_schema(engine, home, clock, migrate=config.auto_migrate)  # the children use its tables
    audit = AuditLog(engine, clock)
    keys = KeyStore(engine, clock, audit=audit)
    queue = Queue(engine, clock, audit_log=audit)
    manifest = ManifestSource(config.federation_manifest, clock)
    manifest()
    rotation = Rotation(OwnKeys(config), manifest, clock)  # which of our keys and certificates in use
    metrics = open_metrics("serve", known_domains(config, manifest)) if config.listener("metrics") else None
    stage = make_stage(config, keys, manifest, clock, rotation, metrics)
    workers = config.crypto_workers(reuse_port) if cpu_workers is None else cpu_workers
    if clock is not time.time:  # a worker process cannot follow an injected clock (tests, proof)
        workers = 0
    pool = CpuPool(role_command("crypto", home.path), workers, metrics=metrics) if workers > 0 else None
    pipeline = Pipeline(config=config, stage=stage, queue=queue, audit=audit,
                        run_stage=pool.decide if pool else None, metrics=metrics, clock=clock)
    tls = switching_context(rotation.tls_pair)
    users = Users(config.passwords_file)
    guard = AuthGuard(users.check, config.auth_budget,
                      on_lock=lambda **fields: audit.append("auth-locked", **fields))
    servers = _smtp_servers(config, pipeline, tls, guard, MemberAddresses(manifest), clock, reuse_port,
                            users.known, rotation)
    owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    delivery, sessions, child = [], None, None
    if clock is time.time and config.separate_delivery(workers):
        child = DeliveryProcess(role_command("delivery", home.path), owner, metrics=metrics)
    else:
        delivery, sessions = build_delivery(config, queue=queue, keys=keys, manifest=manifest,
                                            transformer=stage.transformer, clock=clock, owner=owner,
                                            rotation=rotation, metrics=metrics)
    wkd = _key_directory(config, engine, keys, tls, users, audit, guard, clock, reuse_port)
    jobs = _upkeep(config, audit, keys, queue, manifest, stage.transformer, clock)
    gateway = Gateway(config, queue, audit, keys, pipeline, servers, delivery, engine, wkd, sessions, pool,
                      child, Retention(queue, config.queue.retention, config.queue.purge_interval), guard=guard,
                      jobs=jobs)
    if metrics is not None:
        gateway.monitor = monitor(config, gateway, metrics, manifest, stage, clock, reuse_port)
    return gateway


def _key_directory(config: GatewayConfig, engine, keys: KeyStore, tls, users, audit: AuditLog, guard, clock,
                   reuse_port: bool):
    """The key directory's HTTPS listener ([listeners.wkd]), or None."""
    from ..keys.directory import Directory
    from ..keys.publish import Nonces
    from ..keys.wkd_server import WkdServer
    li = config.listener("wkd")
    if li is None:
        return None
    return WkdServer(li.host, li.port, tls, Directory(engine, keys, config.domains, clock=clock, audit=audit),
                     Nonces(engine), users.check, audit=audit, clock=clock, reuse_port=reuse_port, guard=guard)


def _upkeep(config: GatewayConfig, audit: AuditLog, keys: KeyStore, queue: Queue, manifest: ManifestSource,
            transformer: Transformer, clock) -> list:
    """The serve process's periodic jobs, each run by one process of the home (a lock file in it): the
    manifest fetch ([federation] url) and the audit checkpoints ([audit] checkpoint_interval)."""
    from ..checkpoint import Checkpointer
    from ..manifestfetch import ManifestFetcher
    jobs, fetch, anchor = [], config.federation_fetch, config.audit_anchoring
    if fetch is not None:
        fetcher = ManifestFetcher(fetch, config.federation_manifest, config.federation_authority, keys.get,
                                  audit, clock=clock)
        jobs.append(functools.partial(fetcher.run, lock=config.home / ".manifest-fetch.lock"))
    if anchor is not None and anchor.interval:
        domain = config.domains[0]
        checkpointer = Checkpointer(audit, domain, transformer.domain_keys.get(domain), directory=anchor.directory,
                                    clock=clock, **_checkpoint_route(config, keys, queue, manifest, transformer,
                                                                     domain, anchor.send, anchor.to))
        jobs.append(functools.partial(checkpointer.run, interval=anchor.interval,
                                      lock=config.home / ".audit-checkpoint.lock"))
    return jobs


def _checkpoint_route(config: GatewayConfig, keys: KeyStore, queue: Queue, manifest: ManifestSource,
                      transformer: Transformer, domain: str, send: bool, to: str | None) -> dict:
    """``send`` and ``to`` for a Checkpointer: queued like a DSN (Bounces) to ``to``, else to the
    address of the federation authority's key."""
    if not send:
        return {}
    from ..checkpoint import authority_address
    from ..delivery.bounces import Bounces
    if to is None and config.federation_authority:
        try:
            to = authority_address(keys.get(normalize_fpr(config.federation_authority)))
        except KeyNotFound:
            to = None
    if to is None:
        raise ConfigError("checkpoints are to be sent, but there is no address: set [audit] checkpoint_to, "
                          "or install the manifest with the authority's key (its user ID names its address)")
    bounces = Bounces(config, queue, transformer, manifest)
    return {"to": to, "send": lambda msg, rcpt: bounces.send(msg, rcpt, route="checkpoint", from_domain=domain)}


def open_checkpointer(core: Core, domain: str | None = None, *, send: bool = False,
                      to: str | None = None) -> Checkpointer:
    """``securemail audit checkpoint``: a Checkpointer of a gateway home's ``domain`` (default: its
    first), with its domain key unlocked; with ``send``, queued to ``to`` or the authority's address."""
    from ..checkpoint import Checkpointer
    config = GatewayConfig.load(core.home)
    domain = (domain or config.domains[0]).lower()
    if not config.serves(domain):
        raise ConfigError(f"this gateway does not serve {domain} (it serves {', '.join(config.domains)})")
    manifest = ManifestSource(config.federation_manifest)
    transformer = make_stage(config, core.keys, manifest, time.time).transformer
    route = _checkpoint_route(config, core.keys, core.queue(), manifest, transformer, domain, send, to)
    return Checkpointer(core.audit, domain, transformer.domain_keys.get(domain), **route)


def _smtp_servers(config: GatewayConfig, pipeline: Pipeline, tls, guard, members,
                  clock, reuse_port: bool, known, rotation: Rotation) -> list[SMTPServer]:
    """One SMTP server per listener: AUTH where the listener offers it ([listeners.*] auth); the
    reserved slots for its trusted networks and the manifest's member gateways."""
    from ..crypto.tls import switching_context
    from ..smtp.auth import still_a_user
    from ..smtp.handler import GatewayHandler
    from ..smtp.peercert import request_client_certificates
    from ..smtp.server import make_server
    # member gateways deliver to the relay listener and show their certificate there (smtp/peercert.py)
    relay_tls = switching_context(rotation.tls_pair, request_client_certificates)
    servers = []
    for li in config.listeners:
        if li.name in ("wkd", "metrics"):  # the HTTPS key directory, the HTTP monitor
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


def build_delivery(config: GatewayConfig, *, queue: Queue, keys: KeyStore, manifest: ManifestSource,
                   transformer: Transformer, clock, owner: str,
                   rotation: Rotation, metrics: Metrics | None = None) -> tuple[list[DeliveryWorker], SessionPool]:
    from ..delivery.bounces import Bounces
    from ..delivery.keycheck import KeyCheck, listed_pins
    from ..delivery.pool import SessionPool
    from ..delivery.smtp import client_tls_context
    from ..delivery.worker import DeliveryWorker
    bounces = Bounces(config, queue, transformer, manifest)
    sessions = SessionPool()  # next-hop SMTP sessions reused across messages and workers
    open_sealed = transformer.open_for_office
    if metrics is not None:
        open_sealed = metrics.timed("crypto", "open", open_sealed)
    workers = [DeliveryWorker.from_config(
        config, queue, owner=owner, clock=clock, audit_log=queue.audit_log, concurrency=config.workers,
        reporting_mta=config.domains[0], bounce_sender=bounces.send, deliver_smtp=sessions.deliver,
        pre_send=KeyCheck(keys, manifest, clock).veto, open_sealed=open_sealed,
        tls_client_cert=lambda: client_tls_context(*rotation.tls_pair()),  # members pin it
        member_pins=listed_pins(manifest), metrics=metrics)]
    return workers, sessions


def combined_lookup(*lookups):
    def lookup(keyid: str, fpr: str | None):
        for fn in lookups:
            key = fn(keyid, fpr)
            if key is not None:
                return key
        return None
    return lookup


def make_stage(config, keys: KeyStore, manifest: ManifestSource, clock,
               rotation: Rotation | None = None, metrics: Metrics | None = None) -> CryptoStage:
    """The crypto stage of one process (the SMTP process, or a crypto worker) from the same config."""
    rotation = rotation or Rotation(OwnKeys(config), manifest, clock)
    dkim_signers(config)  # every domain can sign, with keys that load: else the start stops here
    locator = Locator(keys, manifest, clock=clock, refresh_seconds=config.directory_refresh,
                      own_domains=config.domains)
    sign = DkimSigning(rotation).warm(config.domains)  # the keys in use now, read once, at start
    if metrics is not None:
        sign = metrics.timed("dkim", "sign", sign)
    transformer = Transformer(
        hostname=config.hostname, domain_keys=DomainKeys(rotation, keys).check(config.domains),
        user_key=keys.usable_for, member_key=manifest.member_key, member_keys=manifest.member_keys,
        lookup=combined_lookup(keys.lookup, manifest.lookup), dkim_sign=sign, clock=clock,
        locate=locator.key_for)
    return CryptoStage(config=config, manifest=manifest, transformer=transformer, metrics=metrics)
