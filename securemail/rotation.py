"""Key and certificate rotation: which of this gateway's keys it uses now, from its config and the manifest.

``securemail gateway rotate openpgp|dkim|tls`` (admin/rotate.py) makes the next key beside the
current one and names it in securemail.toml: ``[keys.openpgp_next]`` (domain -> fingerprint),
``[[keys.dkim]]`` entries with ``next = true``, ``[tls] next_cert`` and ``next_key``. From then on:

- ``federation entry`` lists the next one, with the current one ``retiring``, until the installed
  manifest lists the next one; then the next one alone (``announce``, ``announce_dkim``);
- the gateway decrypts with both OpenPGP keys, and members accept both (the manifest lists both);
- what members check of this gateway switches to the next key (``switch``): the OpenPGP signature
  and the TLS certificate it shows (as a server and as a client) once the installed manifest lists
  the next one and ``keys.switch_after`` has passed since the authority made that manifest (members
  install it meanwhile), or at once when the manifest no longer lists the current one. DKIM signs
  with every configured selector the manifest lists (both during the overlap: each member passes
  the one it knows), the current ones when it lists none;
- ``gateway retire`` makes the next one current once the installed manifest lists it and no longer
  the current one, and removes the old key.

securemail.toml is read again when it changes (rotate and retire edit it while the gateway runs),
the manifest when it is installed (manifest_source.ManifestSource): no restart is needed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import DkimKeyConfig, GatewayConfig, parse_duration, read_toml
from .crypto.dkim_signing import DkimSigner
from .crypto.keys import Key
from .crypto.tlspin import spki_sha256
from .errors import ConfigError, KeyUnusable, SecureMailError, TemporaryFailure
from .federation import Manifest
from .manifest_source import ManifestSource
from .home import Home
from .keys.store import KeyStore

log = logging.getLogger(__name__)

KINDS = ("openpgp", "dkim", "tls")
SWITCH_AFTER = 86400.0   # keys.switch_after by default: a day for members to install the manifest


@dataclass(frozen=True)
class RotationConfig:
    """The next keys securemail.toml names, beside the current ones of ``GatewayConfig``."""
    tls_next: tuple[Path, Path] | None = None        # [tls] next_cert, next_key
    openpgp_next: dict[str, str] = field(default_factory=dict)  # [keys.openpgp_next]: domain -> fpr
    dkim_next: frozenset[tuple[str, str]] = frozenset()         # (domain, selector) with next = true
    switch_after: float = SWITCH_AFTER                           # [keys] switch_after, seconds

    def dkim(self, config: GatewayConfig, domain: str) -> tuple[list[DkimKeyConfig], list[DkimKeyConfig]]:
        """The domain's configured DKIM keys: (current, next)."""
        keys = [d for d in config.dkim_keys if d.domain == domain]
        return ([d for d in keys if (domain, d.selector) not in self.dkim_next],
                [d for d in keys if (domain, d.selector) in self.dkim_next])


def rotation_config(data: dict, home: Path) -> RotationConfig:
    """The rotation settings of a parsed securemail.toml; ConfigError naming the setting."""
    tls, keys = data.get("tls", {}), data.get("keys", {})
    cert, key = tls.get("next_cert"), tls.get("next_key")
    if (cert is None) != (key is None) or not all(isinstance(v, str) for v in (cert or "", key or "")):
        raise ConfigError("tls.next_cert and tls.next_key are two paths that go together")
    path = lambda p: Path(p) if Path(p).is_absolute() else home / p  # noqa: E731
    nxt = keys.get("openpgp_next", {})
    if not isinstance(nxt, dict) or not all(isinstance(v, str) for v in nxt.values()):
        raise ConfigError("[keys.openpgp_next] must map domains to fingerprints")
    dkim = [d for d in keys.get("dkim", []) if isinstance(d, dict)]
    if any(not isinstance(d.get("next", False), bool) for d in dkim):
        raise ConfigError("keys.dkim next must be true or false")
    return RotationConfig(
        (path(cert), path(key)) if cert else None, {k.lower(): v.upper() for k, v in nxt.items()},
        frozenset((str(d.get("domain", "")).lower(), d.get("selector")) for d in dkim if d.get("next")),
        parse_duration(keys.get("switch_after", SWITCH_AFTER), "keys.switch_after"))


def load_rotation(config: GatewayConfig) -> RotationConfig:
    return rotation_config(read_toml(Home(config.home).config_file), config.home)


# --- the decisions ----------------------------------------------------------------------------
def switch(current_listed: bool, next_listed: bool, created: float, now: float, after: float) -> bool:
    """Does this gateway use its next key for what members check of it (signature, certificate)?"""
    return next_listed and (not current_listed or now >= created + after)


def announce(current: str, nxt: str | None, listed: Collection[str]) -> tuple[str, str | None]:
    """(listed, retiring) for ``federation entry``: the next one with the current one retiring
    until the installed manifest lists the next one, then the next one alone."""
    if nxt is None:
        return current, None
    return (nxt, None) if nxt in listed else (nxt, current)


def announce_dkim(current: list, nxt: list, listed: Collection[str], selector=lambda k: k) -> list:
    """The DKIM keys ``federation entry`` lists: current and next until the manifest lists every
    next selector, then the next ones alone."""
    if not nxt:
        return current
    return nxt if all(selector(k) in listed for k in nxt) else current + nxt


def dkim_signing(current: list, nxt: list, listed: Collection[str], selector=lambda k: k) -> list:
    """The DKIM keys that sign: every one whose selector the manifest lists; the current ones
    when it lists none of them (no manifest yet)."""
    return [k for k in current + nxt if selector(k) in listed] or current


def created_at(manifest: Manifest | None) -> float:
    try:
        return datetime.fromisoformat(manifest.created).timestamp() if manifest else 0.0
    except ValueError:
        return 0.0


# --- this gateway's keys, as they are now ------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    config: GatewayConfig
    rotation: RotationConfig
    tls_pin: str | None          # of [tls] cert
    tls_next_pin: str | None     # of [tls] next_cert


def _pin(path: Path) -> str | None:
    try:
        return spki_sha256(path.read_bytes())
    except OSError:
        return None


class OwnKeys:
    """securemail.toml's keys, read again when the file changes (a cheap stat per call)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.file = Home(config.home).config_file
        self._stamp = self._stat()
        self._snapshot = self._snap(config)

    def _stat(self):
        try:
            st = os.stat(self.file)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except OSError:
            return None

    @staticmethod
    def _snap(config: GatewayConfig) -> Snapshot:
        rot = load_rotation(config)
        return Snapshot(config, rot, _pin(config.tls_cert), _pin(rot.tls_next[0]) if rot.tls_next else None)

    def __call__(self) -> Snapshot:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._snapshot = self._snap(GatewayConfig.load(Home(self._snapshot.config.home)))
                log.info("keys: %s read again", self.file.name)
            except SecureMailError as e:  # a hand edit half done: keep the keys in use
                log.warning("keys: %s unreadable, keeping the keys in use: %s", self.file.name, e.message)
        return self._snapshot


class Rotation:
    """Which of this gateway's keys it uses now: its config (OwnKeys) against the installed manifest."""

    def __init__(self, own: OwnKeys, manifest: ManifestSource, clock: Callable[[], float] = time.time) -> None:
        self.own, self.manifest, self.clock = own, manifest, clock

    def _switch(self, current_listed: bool, next_listed: bool, s: Snapshot) -> bool:
        return switch(current_listed, next_listed, created_at(self.manifest()), self.clock(),
                      s.rotation.switch_after)

    def tls_pair(self) -> tuple[Path, Path]:
        """(certificate, key) to show members now, as a server and as a client."""
        s = self.own()
        current = (s.config.tls_cert, s.config.tls_key)
        if s.rotation.tls_next is None or s.tls_next_pin is None:
            return current
        m = self.manifest()
        ours = [x for x in (m.member(d) for d in s.config.domains) if x] if m else []
        listed = bool(ours) and all(s.tls_next_pin in x.tls_pins for x in ours)
        still = any(s.tls_pin in x.tls_pins for x in ours)
        return s.rotation.tls_next if self._switch(still, listed, s) else current

    def openpgp_signer(self, domain: str) -> str | None:
        """The fingerprint of the key that signs for ``domain`` now (None: not served here)."""
        s = self.own()
        current, nxt = s.config.openpgp_keys.get(domain), s.rotation.openpgp_next.get(domain)
        if nxt is None or current is None:
            return current or nxt
        listed = {k.fingerprint for k in self.manifest.member_keys(domain)}
        return nxt if self._switch(current in listed, nxt in listed, s) else current

    def openpgp_all(self) -> list[str]:
        """Every domain key this gateway decrypts with: the current and the next ones."""
        s = self.own()
        return list(dict.fromkeys([*s.config.openpgp_keys.values(), *s.rotation.openpgp_next.values()]))

    def dkim_keys(self, domain: str) -> tuple[DkimKeyConfig, ...]:
        s = self.own()
        m = self.manifest()
        member = m.member(domain) if m else None
        listed = {sel for sel, _ in member.dkim} if member else set()
        return tuple(dkim_signing(*s.rotation.dkim(s.config, domain), listed, lambda k: k.selector))


# --- what the crypto stage is handed --------------------------------------------------------------
class DomainKeys:
    """``Transformer.domain_keys``: ``get(domain)`` the key that signs for it now, ``values()`` every
    domain key this gateway decrypts with; secret keys unlocked once, for the life of the process."""

    def __init__(self, rotation: Rotation, keys: KeyStore) -> None:
        self.rotation, self.keys = rotation, keys
        self._loaded: dict[str, Key] = {}
        self._domains: tuple[str, ...] = ()

    def get(self, domain: str, default=None) -> Key | None:
        fpr = self.rotation.openpgp_signer(domain)
        return self._load(fpr) if fpr else default

    def values(self) -> list[Key]:
        out = []
        for fpr in self.rotation.openpgp_all():
            try:
                out.append(self._load(fpr))
            except SecureMailError as e:  # one missing key must not stop decryption with the others
                log.error("domain key %s unusable: %s", fpr, e.message)
        return out

    def items(self) -> list[tuple[str, Key]]:
        """(domain, the key that signs for it now) of each domain ``check`` was given."""
        return [(d, k) for d in self._domains if (k := self.get(d)) is not None]

    def __len__(self) -> int:
        return len(self.items())

    def __getitem__(self, domain: str) -> Key:
        key = self.get(domain)
        if key is None:
            raise KeyError(domain)
        return key

    def check(self, domains: Collection[str]) -> "DomainKeys":
        """Every served domain has a usable key now (at start: ConfigError otherwise)."""
        self._domains = tuple(domains)
        for domain in domains:
            if self.rotation.openpgp_signer(domain) is None:
                raise ConfigError(f"no OpenPGP key configured for {domain} ([keys.openpgp])")
            self.get(domain)
        return self

    def _load(self, fpr: str) -> Key:
        key = self._loaded.get(fpr)
        if key is None:
            key = self.keys.get(fpr)
            if not key.is_secret:
                raise ConfigError(f"the domain key {fpr} has no secret part in the key store")
            key.pgp.unlocked(None).__enter__()  # gateway keys are unprotected, in a 0600 database
            self._loaded[fpr] = key
        return key


class DkimSigning:
    """``Transformer.dkim_sign``: signatures by the keys ``Rotation.dkim_keys`` picks for the domain
    now; one DkimSigner per set of keys. ``warm`` makes the signers of the sets in use at start, so
    a key file removed while the gateway runs does not stop it signing (each file is read once)."""

    def __init__(self, rotation: Rotation) -> None:
        self.rotation = rotation
        self._signers: dict[tuple[DkimKeyConfig, ...], DkimSigner] = {}

    def warm(self, domains) -> "DkimSigning":
        for domain in domains:
            keys = self.rotation.dkim_keys(domain)
            if keys:
                self._signer(domain, keys)
        return self

    def __call__(self, body: bytes, domain: str) -> bytes:
        keys = self.rotation.dkim_keys(domain)
        if not keys:
            raise KeyUnusable(f"no DKIM key for {domain}; nothing is sent unsigned")
        return self._signer(domain, keys).sign(body)

    def _signer(self, domain: str, keys: tuple[DkimKeyConfig, ...]) -> DkimSigner:
        signer = self._signers.get(keys)
        if signer is None:
            try:
                pems = [(k.selector, k.private_key.read_bytes(), k.algorithm) for k in keys]
            except OSError as e:  # ours to fix: the sender retries
                raise TemporaryFailure(f"cannot read DKIM key {Path(e.filename or '').name}: {e.strerror}") from None
            signer = self._signers[keys] = DkimSigner(domain, pems)
        return signer
