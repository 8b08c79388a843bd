"""The key directory of a gateway: which key is published for each address of its domains.

Table ``directory``: ``address`` (primary key), ``fingerprint`` of the key in the
key store, ``published_at``, ``source`` (``publish``: the user proved the key
over HTTPS; ``operator``: ``securemail directory add``), plus ``domain`` and
``hu`` (the WKD hash of the local part) to answer WKD requests by hash. The WKD
server (keys/wkd_server.py) serves ``served(address)``: the published key
cut down to the address's own user ID, and any revoked key of the address, so
that revocations reach those who cached it. Publishing binds the key to that
address alone (``publish`` for the owner's request, ``import`` for the operator).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from ..crypto.keys import Key
from ..db import transaction
from ..errors import UsageError
from .binding import OPERATOR, PUBLISH
from .store import KeyStore
from .wkd import served_key, split_address, wkd_hash

log = logging.getLogger(__name__)

metadata = sa.MetaData()
directory_table = sa.Table(
    "directory", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), nullable=False),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("domain", sa.String(253), nullable=False),
    sa.Column("hu", sa.String(32), nullable=False),
    sa.Index("directory_domain_hu", "domain", "hu"),
)


@dataclass(frozen=True)
class Entry:
    address: str
    fingerprint: str
    published_at: float
    source: str


class Directory:
    """Publish, unpublish and list the addresses a gateway serves keys for."""

    def __init__(self, engine: sa.Engine, keys: KeyStore, domains, *,
                 clock: Callable[[], float] = time.time, audit=None) -> None:
        self.engine, self.keys, self.clock, self.audit = engine, keys, clock, audit
        self.domains = tuple(d.lower() for d in domains)

    def _check(self, address: str, key: Key) -> tuple[str, str, str]:
        """(address, domain, hash) when ``key`` may be published for ``address``; UsageError why not."""
        local, domain = split_address(address)
        address = f"{local}@{domain}".lower()
        if domain not in self.domains:
            raise UsageError(f"{domain} is not served by this gateway")
        if address not in key.status.addresses:
            raise UsageError(f"key {key.fingerprint} has no valid user ID for {address}")
        now = self.clock()
        if not key.status.encryption_keys(now):
            raise UsageError(f"key {key.fingerprint} is {key.state_at(now)} or cannot encrypt")
        if served_key(key, address, now) is None:
            raise UsageError(f"key {key.fingerprint} is not valid once cut to {domain}'s user IDs")
        return address, domain, wkd_hash(local)

    def publish(self, address: str, key: Key, source: str) -> Entry:
        """Store ``key``, bind and publish it for ``address`` and pin the address to it; audited."""
        address, domain, hu = self._check(address, key)
        self.keys.add(key.public(), source=f"directory:{source}",
                      bind=PUBLISH if source == "publish" else OPERATOR, only=(address,))
        now = self.clock()
        with transaction(self.engine) as conn:
            conn.execute(directory_table.delete().where(directory_table.c.address == address))
            conn.execute(directory_table.insert().values(
                address=address, fingerprint=key.fingerprint, published_at=now, source=source,
                domain=domain, hu=hu))
        self.keys.pin(address, key.fingerprint, f"directory:{source}")
        if self.audit is not None:
            self.audit.append("key-published", address=address, fingerprint=key.fingerprint,
                              source=source)
        log.info("published %s for %s (%s)", key.fingerprint, address, source)
        return Entry(address, key.fingerprint, now, source)

    def unpublish(self, address: str) -> bool:
        address = address.strip().lower()
        with transaction(self.engine) as conn:
            gone = conn.execute(directory_table.delete().where(
                directory_table.c.address == address)).rowcount > 0
        if gone and self.audit is not None:
            self.audit.append("key-unpublished", address=address)
        return gone

    def entries(self) -> list[Entry]:
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(sa.select(directory_table).order_by(directory_table.c.address)).all()
        return [Entry(r.address, r.fingerprint, r.published_at, r.source) for r in rows]

    def entry(self, address: str) -> Entry | None:
        with transaction(self.engine, write=False) as conn:
            r = conn.execute(sa.select(directory_table).where(
                directory_table.c.address == address.strip().lower())).first()
        return Entry(r.address, r.fingerprint, r.published_at, r.source) if r else None

    def address_for(self, domain: str, hu: str) -> str | None:
        """The published address of ``domain`` whose local part hashes to ``hu``."""
        with transaction(self.engine, write=False) as conn:
            r = conn.execute(sa.select(directory_table.c.address).where(
                directory_table.c.domain == domain.lower(), directory_table.c.hu == hu)).first()
        return r.address if r else None

    def served(self, address: str) -> bytes | None:
        """The binary keys the WKD answers for ``address``; None when nothing may be served."""
        entry = self.entry(address)
        if entry is None or split_address(address)[1] not in self.domains:
            return None
        now = self.clock()
        out = []
        for key in self.keys.find(address):
            if key.fingerprint == entry.fingerprint or key.state_at(now) == "revoked":
                cut = served_key(key, entry.address, now)
                if cut is not None:
                    out.append((key.fingerprint != entry.fingerprint, cut.binary()))
        return b"".join(blob for _, blob in sorted(out)) or None
