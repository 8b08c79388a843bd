"""What a running gateway holds: member gateways' addresses, domain keys, DKIM signers, the crypto stage.

The installed manifest (re-read when it changes) is ``federation.ManifestSource``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..crypto.dkim import DkimSigner
from ..crypto.keys import Key
from ..errors import ConfigError, KeyRefused, KeyUnusable, TemporaryFailure
from ..federation import ManifestSource
from ..keys.store import KeyStore

if TYPE_CHECKING:
    from .stage import CryptoStage

log = logging.getLogger(__name__)


class MemberAddresses:
    """``ip in members``: is this the address of a member gateway in the manifest (for reserved slots).

    Gateways given as IP addresses count at once; names are resolved in a thread,
    again when the manifest changes and every ``refresh`` seconds; until then
    only the addresses already known count. This grants connection slots only,
    never trust: a member's mail is still checked by its certificate and DKIM.
    """

    def __init__(self, manifest: ManifestSource, *, refresh: float = 3600.0,
                 resolve=socket.getaddrinfo, clock=time.monotonic) -> None:
        self.manifest, self.refresh, self.resolve, self.clock = manifest, refresh, resolve, clock
        self._for: object = None
        self._next = 0.0
        self._literal: frozenset[str] = frozenset()
        self._resolved: frozenset[str] = frozenset()

    def __contains__(self, ip: str) -> bool:
        m = self.manifest()
        if m is not self._for or self.clock() >= self._next:
            self._update(m)
        return ip in self._literal or ip in self._resolved

    def _update(self, m) -> None:
        self._for, self._next = m, self.clock() + self.refresh
        literal, names = set(), set()
        for member in (m.members.values() if m else ()):
            try:
                literal.add(str(ipaddress.ip_address(member.gateway[0])))
            except ValueError:
                names.add(member.gateway[0])
        self._literal = frozenset(literal)
        if not names:
            self._resolved = frozenset()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.run_in_executor(None, self._resolve, sorted(names)).add_done_callback(self._done)

    def _resolve(self, names: list[str]) -> frozenset[str]:
        out = set()
        for name in names:
            try:
                out |= {str(info[4][0]) for info in self.resolve(name, None, proto=socket.IPPROTO_TCP)}
            except OSError as e:
                log.info("member gateway %s does not resolve: %s", name, e)
        return frozenset(out)

    def _done(self, future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._resolved = future.result()


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


def dkim_signers(config) -> dict[str, DkimSigner]:
    """Each served domain's DKIM signer; a domain without a usable key stops the start (never unsigned)."""
    by_domain: dict[str, list] = {}
    files: dict[str, list[str]] = {}
    for d in config.dkim_keys:
        try:
            pem = d.private_key.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read DKIM key {d.private_key.name}: {e.strerror}") from None
        by_domain.setdefault(d.domain, []).append((d.selector, pem, d.algorithm))
        files.setdefault(d.domain, []).append(d.private_key.name)
    missing = [dom for dom in config.domains if dom not in by_domain]
    if missing:
        raise ConfigError(f"no DKIM key configured for {', '.join(missing)} ([[keys.dkim]]); "
                          "mail must not leave unsigned")
    signers = {}
    for dom, ks in by_domain.items():
        try:
            signers[dom] = DkimSigner(dom, ks)
        except KeyRefused as e:
            raise ConfigError(f"{e.message} ({', '.join(files[dom])})", detail=e.detail) from None
    return signers


def dkim_sign_fn(signers: dict[str, DkimSigner]):
    def sign(body: bytes, domain: str) -> bytes:
        signer = signers.get(domain)
        if signer is None:
            raise KeyUnusable(f"no DKIM key for {domain}; nothing is sent unsigned")
        return signer.sign(body)
    return sign


def server_tls_context(config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (OSError, ssl.SSLError) as e:
        why = "not a valid certificate and key" if isinstance(e, ssl.SSLError) else e.strerror or str(e)
        raise TemporaryFailure(f"TLS certificate unavailable ({config.tls_cert.name}, "
                               f"{config.tls_key.name}): {why}", detail=str(e)) from None
    return ctx


def combined_lookup(*lookups):
    def lookup(keyid: str, fpr: str | None):
        for fn in lookups:
            key = fn(keyid, fpr)
            if key is not None:
                return key
        return None
    return lookup


def make_stage(config, keys: KeyStore, manifest: ManifestSource, clock) -> "CryptoStage":
    """The crypto stage of one process (the SMTP process, or a crypto worker) from the same config."""
    from ..keys.locate import Locator
    from .stage import CryptoStage
    from .transform import Transformer
    locator = Locator(keys, manifest, clock=clock, refresh_seconds=config.directory_refresh,
                      own_domains=config.domains)
    transformer = Transformer(
        hostname=config.hostname, domain_keys=domain_keys(config, keys), user_key=keys.usable_for,
        member_key=manifest.member_key, lookup=combined_lookup(keys.lookup, manifest.lookup),
        dkim_sign=dkim_sign_fn(dkim_signers(config)), clock=clock, locate=locator.key_for)
    return CryptoStage(config=config, manifest=manifest, transformer=transformer)


@dataclass
class ChildParts:
    """What a child process of serve (crypto worker, delivery process) builds from the home."""
    config: object
    engine: object
    keys: KeyStore
    queue: object
    manifest: ManifestSource
    stage: "CryptoStage"


def open_child(home: Path, *, wal_autocheckpoint: bool = True) -> ChildParts:
    """A child process's composition root: the serve process's home, an engine of its own."""
    from ..audit import AuditLog
    from ..config import GatewayConfig
    from ..db import make_engine
    from ..home import Home
    from ..queue import Queue
    config = GatewayConfig.load(Home(Path(home)))
    engine = make_engine(config.database_url, wal_autocheckpoint=wal_autocheckpoint)
    audit = AuditLog(engine)
    keys = KeyStore(engine, time.time, audit=audit)
    manifest = ManifestSource(config.federation_manifest)
    return ChildParts(config, engine, keys, Queue(engine, time.time, audit_log=audit), manifest,
                      make_stage(config, keys, manifest, time.time))
