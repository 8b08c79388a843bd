"""The composition root: settings → objects. Nothing else builds engines, stores or stages.

``open_home`` (a person's home: keys, audit), ``open_gateway`` (the serve process: every object of
the gateway, handed down), ``open_child(home, role)`` (a crypto worker's or the delivery child's
own objects). The processes' entry points (securemail/roles/, cli/) call these and run what they
were handed; nothing built here imports this module back. Each process's logging
(``setup_logging``) and metrics (``share_metrics``, ``open_metrics``) are set up here too.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa

from .audit import AuditLog
from .config import CoreConfig, GatewayConfig, read_toml
from .crypto.dkim_signing import dkim_sign_fn, dkim_signers
from .crypto.keys import Key
from .db import make_engine
from .errors import ConfigError, SecureMailError
from .federation import ManifestSource
from .home import Home
from .keys.locate import Locator
from .keys.store import KeyStore
from .queue import Queue
from .schema import create_schema
from .transform.routes import Transformer
from .transform.stage import CryptoStage

if TYPE_CHECKING:
    from .delivery.pool import SessionPool
    from .delivery.worker import DeliveryWorker
    from .metrics import Metrics
    from .procs.gateway import Gateway
    from .procs.monitor import MonitorServer
    from .smtp.server import SMTPServer
    from .transform.pipeline import Pipeline

# open_gateway and build_delivery import the serve process's parts where they build them: the
# listeners (aiosmtpd), the key directory (aiohttp) and the delivery client (aiosmtplib) cost a
# process about 15 MiB, and a crypto worker (open_child("crypto")) needs none of them. These are
# imports for load cost, not around a circle: tests/unit/test_import_graph.py counts them too.


@dataclass
class Core:
    """A home's objects for the commands: keys and audit log on the home's database, and the
    gateway's queue and key directory on the same one (``[database] url``)."""
    home: Home
    config: CoreConfig
    engine: sa.Engine
    keys: KeyStore
    audit: AuditLog

    def queue(self) -> Queue:
        return Queue(self.engine, self.keys.clock, audit_log=self.audit)

    def directory(self):
        """The key directory of this gateway home (its served domains from the config)."""
        from .keys.directory import Directory
        config = GatewayConfig.load(self.home)
        return Directory(self.engine, self.keys, config.domains, audit=self.audit)

    def close(self) -> None:
        self.engine.dispose()


def open_home(home_dir=None, clock: Callable[[], float] = time.time, *,
              database_url: str | None = None) -> Core:
    """The person-facing objects of a home; ``database_url`` overrides the config (gateway init)."""
    home = Home.open(home_dir)
    config = CoreConfig.load(home)
    if database_url:
        config = CoreConfig(database_url=database_url)
    if config.database_url == home.default_database_url and not home.database_file.exists():
        os.close(os.open(home.database_file, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = make_engine(config.database_url)
    create_schema(engine, clock)  # every table, once: key changes are audited in every home
    audit = AuditLog(engine, clock)
    keys = KeyStore(engine, clock, audit=audit)
    _private(home.database_file)
    return Core(home, config, engine, keys, audit)


def _private(path) -> None:
    """The database holds secret keys: owner-only, with its WAL files."""
    for p in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(p):
            os.chmod(p, 0o600)


def manifest_path(home: Home) -> Path:
    """Where the home's installed federation manifest is: the gateway's ``[federation] manifest``,
    else ``federation.json`` in a person's home."""
    data = read_toml(home.config_file)
    if "gateway" in data:
        return GatewayConfig.from_dict(data, home.path).federation_manifest
    return home.path / "federation.json"


def open_locator(core: Core, *, timeout: float = 10.0) -> Locator | None:
    """The key locator of a home with an installed federation manifest; None without one.
    ``timeout``: seconds for one directory request (``read`` asks with a short one)."""
    path = manifest_path(core.home)
    if not path.exists():
        return None
    return Locator(core.keys, ManifestSource(path), refresh_seconds=core.config.directory_refresh,
                   timeout=timeout)




# --- logs and metrics of a serve tree's processes -------------------------------------
METRICS_DIR = "metrics"   # in the home: each process's metric files (prometheus-client multiprocess)


def setup_logging(home: Path, role: str, *, level: int | None = None) -> None:
    """This process's log lines as the home's ``[log]`` says (logs.py), tagged with ``role``; the
    defaults when the config cannot be read. ``level`` overrides ``log.level``."""
    from .logs import LogSettings, configure
    try:
        settings = GatewayConfig.load(Home(Path(home))).log
    except SecureMailError:
        settings = LogSettings()
    configure(settings, role, home=Path(home), level=level)


def share_metrics(home: Home, *, fresh: bool) -> bool:
    """For ``securemail serve``, before anything is counted: when ``[listeners.metrics]`` is on, this
    process and every process it starts count in ``home/metrics`` (metrics.py), which the top serve
    process (``fresh``) empties first. Whether they do."""
    if GatewayConfig.load(home).listener("metrics") is None:
        return False
    from .metrics import share_between_processes
    share_between_processes(home.path / METRICS_DIR, fresh=fresh)
    return True


def open_metrics(role: str, known_domains=frozenset, *, shared_only: bool = False) -> Metrics | None:
    """This process's metrics (metrics.py). ``shared_only`` (a child of serve): None unless they are
    counted with the other processes' (``share_metrics`` ran in the serve process), since nobody
    would read them."""
    if shared_only and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    from .metrics import Metrics
    return Metrics(role, known_domains)


def _known_domains(config: GatewayConfig, manifest: ManifestSource):
    """Ours and the members': the domain labels of delivery metrics (any other is "other")."""
    def known() -> set[str]:
        m = manifest()
        return {*config.domains, *(m.members if m else ())}
    return known


def _monitor(config: GatewayConfig, gateway: Gateway, metrics: Metrics, manifest: ManifestSource,
             stage: CryptoStage, clock, reuse_port: bool) -> MonitorServer:
    """The metrics listener of a serve process: its counters, the state read at each scrape, readiness."""
    from .procs.health import Readiness
    from .procs.monitor import MonitorServer
    from .procs.scrape import StateGauges
    li = config.listener("metrics")
    keys = stage.transformer.domain_keys
    ready = Readiness(engine=gateway.engine, manifest=manifest, domains=config.domains, domain_keys=keys,
                      processes=gateway.process_probes, clock=clock)
    state = StateGauges(engine=gateway.engine, manifest=manifest, certificate=config.tls_cert,
                        domain_keys=keys, clock=clock)
    return MonitorServer(li.host, li.port, metrics, ready, state, reuse_port=reuse_port)


# --- the gateway -----------------------------------------------------------------
def role_command(role: str, home: Path) -> list[str]:
    """How a child process of ``role`` is started: its entry point in securemail/roles/."""
    return [sys.executable, "-m", f"securemail.roles.{role}", str(home)]


def open_gateway(home: Home, *, clock=time.time, owner: str | None = None,
          reuse_port: bool = False, cpu_workers: int | None = None) -> Gateway:
    """The composition root of the gateway: config → every object, nothing global.

    ``reuse_port``: this is one of several serve processes sharing the listening
    ports (SO_REUSEPORT; the kernel spreads connections) and the queue.
    ``cpu_workers``: crypto worker processes (default: ``gateway.cpu_workers``);
    with an injected ``clock`` the stage always runs in-process.
    """
    from .authlimit import AuthGuard
    from .crypto.tls import server_tls_context
    from .procs.cpu import CpuPool
    from .procs.delivery import DeliveryProcess
    from .procs.gateway import Gateway
    from .queue.retention import Retention
    from .smtp.members import MemberAddresses
    from .transform.pipeline import Pipeline
    from .users import Users
    config = GatewayConfig.load(home)
    # intake commits never pay for a SQLite checkpoint: the delivery workers run them (worker.py)
    engine = make_engine(config.database_url, wal_autocheckpoint=False)
    create_schema(engine, clock)  # every table, once; the crypto workers and delivery child use them
    audit = AuditLog(engine, clock)
    keys = KeyStore(engine, clock, audit=audit)
    queue = Queue(engine, clock, audit_log=audit)
    manifest = ManifestSource(config.federation_manifest)
    manifest()
    metrics = open_metrics("serve", _known_domains(config, manifest)) if config.listener("metrics") else None
    stage = make_stage(config, keys, manifest, clock, metrics)
    workers = config.crypto_workers(reuse_port) if cpu_workers is None else cpu_workers
    if clock is not time.time:  # a worker process cannot follow an injected clock (tests, proof)
        workers = 0
    pool = CpuPool(role_command("crypto", home.path), workers, metrics=metrics) if workers > 0 else None
    pipeline = Pipeline(config=config, stage=stage, queue=queue, audit=audit,
                        run_stage=pool.decide if pool else None, metrics=metrics, clock=clock)
    tls = server_tls_context(config)
    users = Users(config.passwords_file)
    guard = AuthGuard(users.check, config.auth_budget,
                      on_lock=lambda **fields: audit.append("auth-locked", **fields))
    servers = _smtp_servers(config, pipeline, tls, guard, MemberAddresses(manifest), clock, reuse_port,
                            users.known)
    owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    delivery, sessions, child = [], None, None
    if clock is time.time and config.separate_delivery(workers):
        child = DeliveryProcess(role_command("delivery", home.path), owner, metrics=metrics)
    else:
        delivery, sessions = build_delivery(config, queue=queue, keys=keys, manifest=manifest,
                                            transformer=stage.transformer, clock=clock, owner=owner,
                                            metrics=metrics)
    wkd = _key_directory(config, engine, keys, tls, users, audit, guard, clock, reuse_port)
    gateway = Gateway(config, queue, audit, keys, pipeline, servers, delivery, engine, wkd, sessions, pool,
                      child, Retention(queue, config.queue.retention, config.queue.purge_interval), guard=guard)
    if metrics is not None:
        gateway.monitor = _monitor(config, gateway, metrics, manifest, stage, clock, reuse_port)
    return gateway


def _key_directory(config: GatewayConfig, engine, keys: KeyStore, tls, users, audit: AuditLog, guard, clock,
                   reuse_port: bool):
    """The key directory's HTTPS listener ([listeners.wkd]), or None."""
    from .keys.directory import Directory
    from .keys.publish import Nonces
    from .keys.wkd_server import WkdServer
    li = config.listener("wkd")
    if li is None:
        return None
    return WkdServer(li.host, li.port, tls, Directory(engine, keys, config.domains, clock=clock, audit=audit),
                     Nonces(engine), users.check, audit=audit, clock=clock, reuse_port=reuse_port, guard=guard)


def _smtp_servers(config: GatewayConfig, pipeline: Pipeline, tls, guard, members,
                  clock, reuse_port: bool, known=lambda user: True) -> list[SMTPServer]:
    """One SMTP server per listener: AUTH where the listener offers it ([listeners.*] auth); the
    reserved slots for its trusted networks and the manifest's member gateways."""
    from .crypto.tls import server_tls_context
    from .smtp.auth import still_a_user
    from .smtp.handler import GatewayHandler
    from .smtp.peercert import request_client_certificates
    from .smtp.server import make_server
    # member gateways deliver to the relay listener and show their certificate there (smtp/peercert.py)
    relay_tls = request_client_certificates(server_tls_context(config))
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
                   metrics: Metrics | None = None) -> tuple[list[DeliveryWorker], SessionPool]:
    from .delivery.bounces import Bounces
    from .delivery.keycheck import KeyCheck
    from .delivery.pool import SessionPool
    from .delivery.worker import DeliveryWorker
    bounces = Bounces(config, queue, transformer, manifest)
    sessions = SessionPool()  # next-hop SMTP sessions reused across messages and workers
    open_sealed = transformer.open_for_office
    if metrics is not None:
        open_sealed = metrics.timed("crypto", "open", open_sealed)
    workers = [DeliveryWorker.from_config(
        config, queue, owner=owner, clock=clock, audit_log=queue.audit_log, concurrency=config.workers,
        reporting_mta=config.domains[0], bounce_sender=bounces.send, deliver_smtp=sessions.deliver,
        pre_send=KeyCheck(keys, manifest, clock).veto, open_sealed=open_sealed, metrics=metrics)]
    return workers, sessions


def domain_keys(config, keys: KeyStore) -> dict[str, Key]:
    """Each served domain's secret key, unlocked for the life of the process."""
    out = {}
    for domain in config.domains:
        fpr = config.openpgp_keys.get(domain)
        if not fpr:
            raise ConfigError(f"no OpenPGP key configured for {domain} ([keys.openpgp])")
        key = keys.get(fpr)
        if not key.is_secret:
            raise ConfigError(f"the key for {domain} has no secret part in the key store")
        key.pgp.unlocked(None).__enter__()  # gateway keys are unprotected, in a 0600 database
        out[domain] = key
    return out


def combined_lookup(*lookups):
    def lookup(keyid: str, fpr: str | None):
        for fn in lookups:
            key = fn(keyid, fpr)
            if key is not None:
                return key
        return None
    return lookup


def make_stage(config, keys: KeyStore, manifest: ManifestSource, clock,
               metrics: Metrics | None = None) -> CryptoStage:
    """The crypto stage of one process (the SMTP process, or a crypto worker) from the same config."""
    locator = Locator(keys, manifest, clock=clock, refresh_seconds=config.directory_refresh,
                      own_domains=config.domains)
    sign = dkim_sign_fn(dkim_signers(config))
    if metrics is not None:
        sign = metrics.timed("dkim", "sign", sign)
    transformer = Transformer(
        hostname=config.hostname, domain_keys=domain_keys(config, keys), user_key=keys.usable_for,
        member_key=manifest.member_key, lookup=combined_lookup(keys.lookup, manifest.lookup),
        dkim_sign=sign, clock=clock, locate=locator.key_for)
    return CryptoStage(config=config, manifest=manifest, transformer=transformer, metrics=metrics)


# --- a child process of serve ------------------------------------------------------
@dataclass
class ChildParts:
    """What a child process of serve builds from the home: a crypto worker uses the stage, the
    delivery child its workers and session pool."""
    config: GatewayConfig
    engine: sa.Engine
    keys: KeyStore
    queue: Queue
    manifest: ManifestSource
    stage: CryptoStage
    workers: list[DeliveryWorker] | None = None
    sessions: SessionPool | None = None
    metrics: Metrics | None = None

    def close(self) -> None:
        if self.metrics is not None:  # this process's live gauges go with it (its counts stay)
            self.metrics.process_ended(os.getpid())
        self.engine.dispose()


def open_child(home: Path, role: str, *, owner: str = "") -> ChildParts:
    """A child process's objects: the serve process's home, an engine of its own.
    ``role``: "crypto" (the stage) or "delivery" (the stage's transformer and the delivery workers)."""
    if role not in ("crypto", "delivery"):
        raise ConfigError(f"unknown child role {role!r}")
    config = GatewayConfig.load(Home(Path(home)))
    # the delivery workers run the SQLite checkpoints themselves (delivery/worker.py)
    engine = make_engine(config.database_url, wal_autocheckpoint=role != "delivery")
    audit = AuditLog(engine)
    keys = KeyStore(engine, time.time, audit=audit)
    manifest = ManifestSource(config.federation_manifest)
    queue = Queue(engine, time.time, audit_log=audit)
    metrics = open_metrics(role, _known_domains(config, manifest), shared_only=True)
    parts = ChildParts(config, engine, keys, queue, manifest, make_stage(config, keys, manifest, time.time, metrics),
                       metrics=metrics)
    if role == "delivery":
        parts.workers, parts.sessions = build_delivery(
            config, queue=queue, keys=keys, manifest=manifest, transformer=parts.stage.transformer,
            clock=time.time, owner=owner, metrics=metrics)
    return parts
