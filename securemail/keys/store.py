"""The key store: certificates and secret keys in SQL, found by address or fingerprint.

Every key is validated on the way in (crypto.keys.evaluate); an update to a
known key is merged (new subkeys, revocations, new expiry). Revoked and expired
keys are kept, marked, so that their signatures are reported invalid and
nothing is encrypted to them. Secret keys live in the same database, which the
home keeps at mode 0600.

Binding: a key is found for an address only when it has a valid user ID for it
*and* that address is bound to it (keys/binding.py, table ``key_bindings``) by
the operator (``import``), the owner's publication (``publish``) or the
directory of the address's own domain (``directory:<domain>``). A user ID no one
entitled vouched for is kept in the certificate but never used.

Pinning: the first key that can encrypt seen for a bound address is pinned to it
(table ``pins``). Encryption then uses the pinned key only; another key for that
address is a *change* (``trusted_for`` raises KeyChanged) until a person
accepts it (``accept``, ``securemail keys accept``). A pin is only ever made
from a binding.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from ..crypto import merge as _merge
from ..crypto import openpgp
from ..crypto.keys import Key, load_keys
from ..db import transaction
from ..errors import KeyChanged, KeyNotFound, KeyRefused, UsageError
from . import binding as B

metadata = sa.MetaData()
keys_table = sa.Table(
    "keys", metadata,
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),        # binary transferable key
    sa.Column("secret", sa.Boolean, nullable=False, default=False),
    sa.Column("addresses", sa.Text, nullable=False),          # JSON list, lower case
    sa.Column("source", sa.String(200), nullable=False, default="import"),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
addresses_table = sa.Table(
    "key_addresses", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), sa.ForeignKey("keys.fingerprint", ondelete="CASCADE"),
              primary_key=True),
)

pins_table = sa.Table(
    "pins", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(40), nullable=False),
    sa.Column("pinned_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("superseded", sa.Text, nullable=False, default="[]"),  # JSON: keys set aside for it
)


@dataclass(frozen=True)
class ImportResult:
    fingerprint: str | None
    outcome: str            # "new" | "updated" | "unchanged" | "refused"
    reason: str = ""
    key: Key | None = None
    bound: tuple[str, ...] = ()   # addresses bound to the key by this import


class KeyStore:
    def __init__(self, engine: sa.Engine, clock: Callable[[], float] = time.time,
                 audit=None) -> None:
        self.engine = engine
        self.clock = clock
        self.audit = audit  # AuditLog: key changes are recorded (fingerprints and states only)
        self._writes = 0    # changes made through this object (part of generation())
        self._gen_at: tuple[float, tuple] | None = None
        self._cache: dict[str, tuple[bytes, Key]] = {}
        self._index: tuple[tuple, dict[str, Key]] | None = None   # lookup's, by generation()

    # --- writing ------------------------------------------------------------------
    def import_bytes(self, data: bytes, source: str = "import", bind: str | None = B.OPERATOR,
                     only=None) -> list[ImportResult]:
        """Import every key in ``data``; refused keys get a one-line reason each."""
        try:
            items = load_keys(data)
        except KeyRefused as e:
            return [ImportResult(None, "refused", e.message)]
        except Exception as e:  # noqa: BLE001 - bad input must become a clear refusal
            from ..errors import SecureMailError
            msg = e.message if isinstance(e, SecureMailError) else "unreadable key data"
            return [ImportResult(None, "refused", msg)]
        return [ImportResult(i.detail, "refused", i.message) if isinstance(i, KeyRefused)
                else self.add(i, source, bind, only) for i in items]

    def add(self, key: Key, source: str = "import", bind: str | None = B.OPERATOR,
            only=None) -> ImportResult:
        """Store or merge ``key`` (``source``: where its bytes came from) and bind the addresses
        ``bind`` vouches for (binding.bindable): the operator by default, every user ID of
        ``key``; a publication or a directory, the addresses in ``only``; None, nothing."""
        self._writes += 1
        now = self.clock()
        with transaction(self.engine) as conn:
            row = conn.execute(sa.select(keys_table.c.data).where(
                keys_table.c.fingerprint == key.fingerprint)).first()
            if row is None:
                merged, outcome = key, "new"
            else:
                blob = _merge.merge(bytes(row.data), key.binary())
                merged, outcome = ((self._key(blob), "unchanged") if blob == bytes(row.data)
                                   else (_load_one(blob), "updated"))
            if outcome != "unchanged":
                self._write(conn, merged, source, now, new=row is None)
                self._record(conn, outcome, merged, source)
            # what this source vouches for, among the user IDs it sent that are valid once merged
            claims = [a for a in key.status.addresses if a in merged.status.addresses]
            bound = self._bind(conn, merged.fingerprint, B.bindable(bind, claims, only), bind, now)
            if (outcome != "unchanged" or bound) and merged.status.encryption_keys(now):
                self._pin_new(conn, merged, source, now)
        return ImportResult(key.fingerprint, outcome, key=merged, bound=bound)

    def _bind(self, conn, fpr: str, addresses, source: str | None, now: float) -> tuple[str, ...]:
        """Insert the bindings not made yet (the first source to bind an address is kept)."""
        if not addresses:
            return ()
        have = {r.address for r in conn.execute(sa.select(B.bindings_table.c.address).where(
            B.bindings_table.c.fingerprint == fpr, B.bindings_table.c.address.in_(addresses)))}
        new = tuple(a for a in addresses if a not in have)
        for a in new:
            conn.execute(B.bindings_table.insert().values(address=a, fingerprint=fpr, source=source,
                                                          bound_at=now))
        if new:  # other processes see the change through generation()
            conn.execute(keys_table.update().where(keys_table.c.fingerprint == fpr).values(updated_at=now))
            if self.audit is not None:
                self.audit.append_in(conn, "key-bound", fingerprint=fpr, source=source, addresses=list(new))
        return new

    def _pin_new(self, conn, key: Key, source: str, now: float) -> None:
        """Pin each address bound to ``key`` that has no pin yet to the first key seen for it
        (``key``, or the newest usable key bound to it before pins existed)."""
        bound = [a for a in key.status.addresses if a in self._bound(conn, key.fingerprint)]
        pinned = {r.address for r in conn.execute(sa.select(pins_table.c.address).where(
            pins_table.c.address.in_(bound)))}
        for a in bound:
            if a not in pinned:
                before = [k for k in self._find(conn, a)
                          if k.fingerprint != key.fingerprint and k.status.encryption_keys(now)]
                first = max(before, key=lambda k: k.status.created) if before else key
                conn.execute(pins_table.insert().values(address=a, fingerprint=first.fingerprint,
                                                        pinned_at=now, source=source, superseded="[]"))

    def _bound(self, conn, fpr: str) -> set[str]:
        return {r.address for r in conn.execute(sa.select(B.bindings_table.c.address).where(
            B.bindings_table.c.fingerprint == fpr))}

    def bindings(self, fingerprint: str | None = None) -> list[tuple[str, str, str]]:
        """(address, fingerprint, source) of every binding, or of one key's."""
        q = sa.select(B.bindings_table).order_by(B.bindings_table.c.fingerprint, B.bindings_table.c.address)
        if fingerprint is not None:
            q = q.where(B.bindings_table.c.fingerprint == fingerprint)
        with transaction(self.engine, write=False) as conn:
            return [(r.address, r.fingerprint, r.source) for r in conn.execute(q)]

    def pin(self, address: str, fingerprint: str, source: str) -> str | None:
        """Pin ``address`` to the stored key ``fingerprint`` (it must carry the address); the old pin.

        A decision by a person (accept, publish): every other key known now for the
        address is set aside, and only a key seen later is a change.
        """
        self._writes += 1
        address = address.strip().lower()
        key = self.get(fingerprint)
        if address not in key.status.addresses:
            raise UsageError(f"key {key.fingerprint} has no valid user ID for {address}")
        old = self.pinned(address)
        with transaction(self.engine) as conn:
            found = {k.fingerprint for k in self._find(conn, address)}
            if key.fingerprint not in found:  # a pin is made from a binding only
                raise UsageError(f"key {key.fingerprint} is not bound to {address}: import it "
                                 "(securemail keys import) or find it in its domain's directory")
            others = sorted(found - {key.fingerprint})
            conn.execute(pins_table.delete().where(pins_table.c.address == address))
            conn.execute(pins_table.insert().values(address=address, fingerprint=key.fingerprint,
                                                    pinned_at=self.clock(), source=source,
                                                    superseded=json.dumps(others)))
        return old

    def accept(self, address: str, fingerprint: str) -> str | None:
        """A person accepts a changed key: re-pin, audit "key-accepted"; the previous pin."""
        self._writes += 1
        key = self.get(fingerprint)
        if not key.status.encryption_keys(self.clock()):
            raise UsageError(f"key {key.fingerprint} is {key.state_at(self.clock())} or cannot "
                             "encrypt; it cannot be accepted")
        old = self.pin(address, key.fingerprint, "accepted")
        if self.audit is not None:
            self.audit.append("key-accepted", address=address.strip().lower(),
                              fingerprint=key.fingerprint, previous=old)
        return old

    def pinned(self, address: str) -> str | None:
        row = self._pin_row(address)
        return row.fingerprint if row else None

    def _pin_row(self, address: str):
        with transaction(self.engine, write=False) as conn:
            return conn.execute(sa.select(pins_table).where(
                pins_table.c.address == address.strip().lower())).first()

    def _record(self, conn, action: str, key: Key | None, source: str, fpr: str = "") -> None:
        if self.audit is not None:
            self.audit.append_in(conn, "key-change", action=action, source=source,
                                 fingerprint=key.fingerprint if key else fpr,
                                 secret=bool(key and key.is_secret),
                                 state=key.state_at(self.clock()) if key else "deleted")

    def _write(self, conn, key: Key, source: str, now: float, new: bool) -> None:
        addrs = list(key.status.addresses)
        values = dict(data=key.binary(), secret=key.is_secret, addresses=json.dumps(addrs),
                      updated_at=now)
        if new:
            conn.execute(keys_table.insert().values(fingerprint=key.fingerprint, source=source,
                                                    added_at=now, **values))
        else:
            conn.execute(keys_table.update().where(keys_table.c.fingerprint == key.fingerprint)
                         .values(**values))
        conn.execute(addresses_table.delete().where(addresses_table.c.fingerprint == key.fingerprint))
        for a in addrs:
            conn.execute(addresses_table.insert().values(address=a, fingerprint=key.fingerprint))

    def revoke(self, fingerprint: str, passphrase: str | None, reason: str = "none",
               comment: str = "") -> bytes:
        """Revoke one of our secret keys; store it and return the armored revocation."""
        self._writes += 1
        key = self.get(fingerprint)
        if not key.is_secret:
            raise KeyNotFound(f"no secret key {fingerprint}: only own keys can be revoked")
        sig = openpgp.revoke(key.pgp, passphrase, reason, comment)
        revoked = _load_one(_merge.add_signature(key.binary(), sig))
        with transaction(self.engine) as conn:
            self._write(conn, revoked, "revoke", self.clock(), new=False)
            self._record(conn, "revoked", revoked, "revoke")
        return revoked.public().armored()

    def delete(self, fingerprint: str) -> None:
        self._writes += 1
        fpr = self._resolve(fingerprint)
        with transaction(self.engine) as conn:
            conn.execute(addresses_table.delete().where(addresses_table.c.fingerprint == fpr))
            conn.execute(B.bindings_table.delete().where(B.bindings_table.c.fingerprint == fpr))
            conn.execute(pins_table.delete().where(pins_table.c.fingerprint == fpr))
            conn.execute(keys_table.delete().where(keys_table.c.fingerprint == fpr))
            self._record(conn, "deleted", None, "operator", fpr)

    # --- reading -------------------------------------------------------------------
    def _key(self, blob: bytes) -> Key:
        fpr = _merge.fingerprint(_first_body(blob))
        hit = self._cache.get(fpr)
        if hit and hit[0] == blob:
            return hit[1]
        key = _load_one(blob)
        self._cache[fpr] = (blob, key)
        return key

    def _resolve(self, ident: str) -> str:
        ident = ident.replace(" ", "").upper()
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(sa.select(keys_table.c.fingerprint).where(
                keys_table.c.fingerprint.like(f"%{ident}") if len(ident) in (8, 16) else
                keys_table.c.fingerprint == ident)).all()
        if len(rows) != 1:
            raise KeyNotFound(f"no key {ident}" if not rows else f"key ID {ident} is ambiguous")
        return rows[0].fingerprint

    def get(self, ident: str) -> Key:
        """By fingerprint (or unambiguous long/short key ID)."""
        fpr = self._resolve(ident)
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(sa.select(keys_table.c.data).where(keys_table.c.fingerprint == fpr)).one()
        return self._key(bytes(row.data))

    def find(self, address: str) -> list[Key]:
        """Every key with a valid user ID for ``address`` bound to it (any state)."""
        with transaction(self.engine, write=False) as conn:
            return self._find(conn, address)

    def _find(self, conn, address: str) -> list[Key]:
        bt = B.bindings_table
        rows = conn.execute(sa.select(keys_table.c.data).join(
            addresses_table, addresses_table.c.fingerprint == keys_table.c.fingerprint).join(
            bt, sa.and_(bt.c.fingerprint == addresses_table.c.fingerprint,
                        bt.c.address == addresses_table.c.address)).where(
            addresses_table.c.address == address.strip().lower())).all()
        return [self._key(bytes(r.data)) for r in rows]

    def usable_for(self, address: str, now: float | None = None) -> Key | None:
        """The key to encrypt to for ``address``: the pinned one if it can encrypt now (None if
        it cannot); without a pin, the newest valid key that can."""
        now = self.clock() if now is None else now
        ok = [k for k in self.find(address) if k.status.encryption_keys(now)]
        pin = self.pinned(address)
        if pin is not None:
            return next((k for k in ok if k.fingerprint == pin), None)
        return max(ok, key=lambda k: k.status.created, default=None)

    def trusted_for(self, address: str, now: float | None = None) -> Key | None:
        """``usable_for``, but KeyChanged when another key that can encrypt is known for a
        pinned address: a change is never used, nor ignored, without a person accepting it."""
        now = self.clock() if now is None else now
        key = self.usable_for(address, now)
        row = self._pin_row(address)
        if row is None:
            return key
        aside = {row.fingerprint, *json.loads(row.superseded or "[]")}
        others = [k for k in self.find(address)
                  if k.fingerprint not in aside and k.status.encryption_keys(now)]
        if others:
            offered = max(others, key=lambda k: k.status.created)
            raise KeyChanged(address.strip().lower(), row.fingerprint, offered.fingerprint)
        return key

    def secret_keys(self) -> list[Key]:
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(sa.select(keys_table.c.data).where(keys_table.c.secret.is_(True))).all()
        return [self._key(bytes(r.data)) for r in rows]

    def all(self) -> list[tuple[Key, str, float]]:
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(sa.select(keys_table.c.data, keys_table.c.source,
                                          keys_table.c.added_at).order_by(keys_table.c.added_at)).all()
        return [(self._key(bytes(r.data)), r.source, r.added_at) for r in rows]

    def generation(self) -> tuple:
        """Changes whenever a key or a pin is added, updated or removed.

        Writes through this object count at once; writes by other processes (the
        CLI) are seen by a query that runs at most four times a second.
        """
        now = self.clock()
        if self._gen_at is not None and 0 <= now - self._gen_at[0] < 0.25:
            return (self._writes, *self._gen_at[1])
        q = sa.select(sa.select(sa.func.max(keys_table.c.updated_at)).scalar_subquery(),
                      sa.select(sa.func.count()).select_from(keys_table).scalar_subquery(),
                      sa.select(sa.func.max(pins_table.c.pinned_at)).scalar_subquery(),
                      sa.select(sa.func.count()).select_from(pins_table).scalar_subquery())
        with transaction(self.engine, write=False) as conn:
            row = tuple(conn.execute(q).one())
        self._gen_at = (now, row)
        return (self._writes, *row)

    def lookup(self, keyid: str, fpr: str | None) -> Key | None:
        """CertLookup for message.decrypt: the key holding (sub)key ``keyid`` or ``fpr``.

        Answered from an index of every (sub)key, built again when ``generation()`` changes: a
        reader asks once per signature and per recipient, and reading every key from the
        database each time cost more than the decryption of a small message."""
        gen = self.generation()
        if self._index is None or self._index[0] != gen:
            index: dict[str, Key] = {}
            for key, _, _ in self.all():   # oldest first: the first key holding a (sub)key wins
                public = key.public()
                for c in (key.status.primary, *key.status.subkeys):
                    index.setdefault(c.fingerprint, public)
                    index.setdefault(c.keyid, public)
            self._index = (gen, index)
        index = self._index[1]
        return (index.get(fpr) if fpr else None) or (index.get(keyid) if keyid else None)


def _first_body(blob: bytes) -> bytes:
    from ..crypto.packets import read_packet
    return read_packet(blob, 0)[0].body


def _load_one(blob: bytes) -> Key:
    items = load_keys(blob)
    if len(items) != 1 or isinstance(items[0], KeyRefused):
        raise items[0] if items and isinstance(items[0], KeyRefused) else KeyRefused("merge failed")
    return items[0]
