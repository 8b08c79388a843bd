"""Finding a recipient's key in the federation: WKD at the recipient domain's gateway, pinned TLS, cached.

The recipient's domain must be a federation member with a ``wkd`` entry; the
key is fetched over HTTPS from that host and port, and the TLS certificate's
public key must match the member's ``tls_pin`` (checked before the request is
sent; a mismatch is a failure, never a fallback). Keys with a valid user ID for
the address are cut to that user ID alone (a directory speaks for the address
asked for, in its own domain, for nothing else) and go to the key store (source
``wkd:<domain>``, bound to the address by ``directory:<domain>``; updates are
merged, so a revocation is honoured), and each fetch is recorded in ``key_sources``
with its time. A cached answer is used until ``refresh_seconds`` old (a "no key
there" answer until ``negative_seconds``). Pinning and changes are the key
store's (``KeyStore.trusted_for``).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from ..crypto.keys import Key
from ..db import transaction
from ..errors import KeyChanged, LocateError, TemporaryFailure
from ..net import join_hostport
from .binding import directory_source
from .sources import sources_table
from .store import KeyStore
from .wkd import advanced_url, keys_for, split_address

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class Located:
    address: str
    key: Key | None          # the key to encrypt to: pinned (or first seen) and usable now
    status: str              # fetched | cached | not-found | changed | unusable | no-directory | failed
    detail: str = ""
    pinned: str | None = None
    offered: str | None = None   # a different key the directory offers (status "changed")
    source: str | None = None
    fetched_at: float | None = None

    def why(self) -> str:
        """Why there is no key to use, in a reader's words (for a ``warning``)."""
        domain = self.address.rpartition("@")[2]
        return {"no-directory": f"{domain} has no key directory in the federation",
                "failed": f"the directory of {domain} could not be reached ({self.detail})",
                "not-found": f"the directory of {domain} has no key for {self.address}",
                "changed": f"the key for {self.address} changed and was not accepted ({self.detail})",
                "unusable": f"every key known for {self.address} is revoked, expired or not pinned",
                }.get(self.status, self.detail or f"no key for {self.address}")


def fetch_wkd(url: str, pin: str, *, timeout: float = 10.0) -> bytes | None:
    """The body of a WKD answer (None for 404), over TLS whose key must match ``pin`` (keys/wkdfetch.py).

    The HTTP client is loaded here, at the first fetch, not when a Locator is built: every crypto
    worker builds one, and most lookups are answered from the key store without a fetch.
    """
    from .wkdfetch import fetch_wkd as fetch
    return fetch(url, pin, timeout=timeout)


class Locator:
    """Looks up, caches and refreshes keys of federation members' users."""

    def __init__(self, store: KeyStore, manifest_source: Callable[[], object], *,
                 clock: Callable[[], float] = time.time, fetch=None,
                 refresh_seconds: float = DAY, negative_seconds: float = 600.0,
                 retry_seconds: float = 60.0, own_domains=(), memo_seconds: float = 60.0,
                 timeout: float = 10.0) -> None:
        self.store, self.manifest, self.clock = store, manifest_source, clock
        # one bounded request per lookup: ``timeout`` seconds in all (connect, TLS, answer)
        self.fetch = fetch or functools.partial(fetch_wkd, timeout=timeout)
        self.refresh_seconds, self.negative_seconds = refresh_seconds, negative_seconds
        self.retry_seconds = retry_seconds   # after a failure, that directory is left alone this long
        self._down: dict[str, float] = {}    # domain -> time of its directory's last failure
        self.own_domains = tuple(d.lower() for d in own_domains)
        self.memo_seconds = memo_seconds
        self._memo: dict[str, tuple[float, tuple, object]] = {}

    def _last(self, address: str):
        with transaction(self.store.engine, write=False) as conn:
            return conn.execute(sa.select(sources_table).where(sources_table.c.address == address)
                                .order_by(sources_table.c.fetched_at.desc())).first()

    def _fresh(self, address: str, now: float) -> bool:
        last = self._last(address)
        if last is None:
            return False
        ttl = self.refresh_seconds if last.fingerprint else min(self.negative_seconds, self.refresh_seconds)
        return now - last.fetched_at < ttl

    def _directory(self, domain: str):
        m = self.manifest() if domain not in self.own_domains else None
        member = m.member(domain) if m is not None else None
        return member if member is not None and getattr(member, "wkd", None) else None

    def locate(self, address: str, refresh: bool = False) -> Located:
        """Fetch (unless a fresh cached answer exists and not ``refresh``) and judge the key."""
        address = address.strip().lower()
        domain = split_address(address)[1]
        member = self._directory(domain)
        if member is None:
            return self._judge(address, "no-directory", f"{domain} has no key directory in the federation")
        now = self.clock()
        if not refresh and self._fresh(address, now):
            return self._judge(address, "cached")
        if now - self._down.get(domain, -self.retry_seconds) < self.retry_seconds:
            return self._judge(address, "failed", f"{domain}'s key directory failed recently")
        url = advanced_url(join_hostport(*member.wkd), address)
        try:
            data = self.fetch(url, ",".join(member.tls_pins))  # both while it rotates its certificate
        except LocateError as e:
            log.warning("locate %s: %s", address, e.message)
            self._down[domain] = now
            return self._judge(address, "failed", e.message)
        keys, dropped = keys_for(data, address) if data else ([], [])
        for why in dropped:
            log.info("locate %s: ignored a key: %s", address, why)
        source = f"wkd:{domain}"
        with transaction(self.store.engine) as conn:
            conn.execute(sources_table.delete().where(sources_table.c.address == address))
            for fpr in [k.fingerprint for k in keys] or [""]:
                conn.execute(sources_table.insert().values(address=address, fingerprint=fpr,
                                                           source=source, fetched_at=now))
        # valid keys first: the first key seen that can encrypt is the one pinned. The directory of
        # ``domain`` binds ``address`` only (binding.bindable also refuses any other domain's).
        for key in sorted(keys, key=lambda k: not k.status.encryption_keys(now)):
            self.store.add(key, source=source, bind=directory_source(domain), only=(address,))
        return self._judge(address, "fetched" if keys else "not-found",
                           "" if keys else "; ".join(dropped) or "no key published")

    def _judge(self, address: str, status: str, detail: str = "") -> Located:
        now = self.clock()
        pinned, offered = self.store.pinned(address), None
        try:
            key = self.store.trusted_for(address, now)
        except KeyChanged as e:
            key, offered, status = None, e.offered, "changed"
            detail = e.message
        if key is None and status in ("fetched", "cached") and self.store.find(address):
            status, detail = "unusable", "every key known for the address is revoked, expired or not pinned"
        last = self._last(address)
        return Located(address, key, status, detail, pinned, offered,
                       last.source if last else None, last.fetched_at if last else None)

    def for_signer(self, address: str) -> Located:
        """For a signature by a key not known here: the key ``send`` would use for ``address`` (bound
        by its domain's directory or the operator, pinned, not revoked), located first when the store
        has none or its directory copy is stale. ``key`` None: ``why()`` says why."""
        address = address.strip().lower()
        domain = split_address(address)[1]
        if self._directory(domain) is None and self.store.usable_for(address) is None:
            return self._judge(address, "no-directory", f"{domain} has no key directory in the federation")
        located = self.ensure(address)
        return located if located is not None else self._judge(address, "cached")

    def ensure(self, address: str) -> Located | None:
        """Locate when the store has no usable key for ``address`` or its directory copy is stale."""
        address = address.strip().lower()
        if self._directory(split_address(address)[1]) is None:
            return None
        now = self.clock()
        if self.store.usable_for(address, now) is not None and (
                self._last(address) is None or self._fresh(address, now)):
            return None  # imported by hand, or fetched recently
        return self.locate(address)

    def key_for(self, address: str) -> Key | None:
        """The gateway's recipient key: located if needed, then the pinned one; KeyChanged on a change.

        Answers are remembered while the key store is unchanged (one cheap query
        instead of a dozen per message), for at most ``memo_seconds``.
        """
        now = self.clock()
        gen = self.store.generation()
        hit = self._memo.get(address)
        if hit is not None and hit[0] > now and hit[1] == gen:
            if isinstance(hit[2], KeyChanged):
                raise hit[2]
            return hit[2]
        if len(self._memo) > 10_000:
            self._memo.clear()
        until = now + min(self.memo_seconds, self.refresh_seconds)  # never past a due refresh
        try:
            key = self._key_for(address)
        except KeyChanged as e:
            self._memo[address] = (until, self.store.generation(), e)
            raise
        self._memo[address] = (until, self.store.generation(), key)
        return key

    def _key_for(self, address: str) -> Key | None:
        try:
            self.ensure(address)
        except TemporaryFailure as e:  # the directory or the database: use what is known
            log.warning("locate %s: %s", address, e.message)
        return self.store.trusted_for(address)
