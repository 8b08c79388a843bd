"""The durable queue: enqueue after commit, claim deliveries with leases, settle, operate.

A message is stored once; each recipient gets a delivery row with its own state
('queued' -> 'delivered' | 'bounced' | 'held') and next hop. Workers
``claim`` due deliveries under a lease and settle them with ``mark_delivered``,
``defer``, ``bounce`` or ``hold``; a settle succeeds only while the worker's
lease (owner and lease_until) is still on the row, i.e. nobody re-claimed it
after it expired. ``attempts`` counts claims, so a message that crashes its
worker still ages towards giving up.

Claims are exclusive: on PostgreSQL the due rows are selected ``FOR UPDATE SKIP
LOCKED``; on SQLite every write transaction starts with ``BEGIN IMMEDIATE``
(see ``securemail.db``), so claimers run one after the other.

A message is finished when every delivery is final (delivered or bounced).
Its body is removed (set to zero bytes) by the settle that finishes it, in
the same transaction, so a body never outlives its last delivery and is never
removed while one is pending; its metadata (message and delivery rows) is
removed later by ``purge`` (``queue.retention``, see ``securemail.queue.retention``).

``enqueue``, the settle methods, ``retry``, ``delete`` and ``purge`` accept
``audit=(kind, fields)``: the audit record is written in the same transaction
as the change, and only if the change happened (needs ``Queue(..., audit_log=...)``).
Database failures raise ``TemporaryFailure``.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from securemail.audit import AuditLog
from securemail.db import checkpoint as db_checkpoint, transaction
from securemail.errors import UsageError
from securemail.queue.models import FINAL_STATES, STATES, deliveries as D, messages as M
from securemail.queue.replay import Seen, admit, replay_audit

AuditSpec = tuple[str, Mapping[str, Any]] | None
_INSERT_MESSAGE = M.insert()
_INSERT_DELIVERY = D.insert()
PURGE_BATCH = 500  # messages per purge transaction: a purge never holds the write lock long

# a delivery of the message in the outer query that is not final: the message is not finished
_PENDING = sa.select(D.c.id).where(D.c.message_id == M.c.id, D.c.state.not_in(FINAL_STATES)).exists()
_HAS_BODY = sa.func.length(M.c.body) > 0
# the one statement a settle batch adds: the bodies of the messages it finished, gone
_REMOVE_BODIES = M.update().where(
    M.c.id.in_(sa.bindparam("b_mids", expanding=True)), _HAS_BODY, ~_PENDING).values(body=b"")


@functools.lru_cache(maxsize=16)
def _settle_statement(columns: tuple[str, ...]):
    """UPDATE of leased deliveries (ids in ``b_ids``, one owner and lease) setting ``columns``,
    RETURNING the ids it changed; one constant statement per column set."""
    return D.update().where(
        D.c.id.in_(sa.bindparam("b_ids", expanding=True)), D.c.state == "queued",
        D.c.lease_owner == sa.bindparam("b_owner"), D.c.lease_until == sa.bindparam("b_until"),
    ).values(**{c: sa.bindparam(c) for c in columns}, lease_owner=None, lease_until=None,
             updated_at=sa.bindparam("b_now")).returning(D.c.id)


@dataclass(frozen=True)
class NewMessage:
    """One message to queue, as the crypto stage makes it: envelope, (recipient, next hop) pairs,
    final bytes. A next hop is a ``transform.hops.Hop``, stored as its text (``str(hop)``)."""
    sender: str
    recipients: Sequence[tuple[str, Any]]
    body: bytes
    peer: str = ""
    meta: Mapping[str, Any] | None = None
    audit: AuditSpec = None
    replay: Seen | None = None  # a member's message: not queued if seen before, audited (queue/replay.py)


@dataclass(frozen=True)
class Purged:
    """What one ``purge`` removed: finished messages and their deliveries, and leftover bodies."""
    messages: int = 0
    deliveries: int = 0
    bodies: int = 0
    more: bool = False   # a batch was full: call again

    @property
    def rows(self) -> int:
        return self.messages + self.deliveries


@dataclass(frozen=True)
class Claim:
    """A leased delivery; fetch the bytes with ``Queue.body(claim.message_id)``."""
    delivery_id: str
    message_id: str
    recipient: str
    next_hop: str
    attempts: int        # including this one
    sender: str
    created_at: float    # of the message, for next_retry()
    owner: str
    lease_until: float
    body: bytes | None = field(default=None, repr=False, compare=False)  # small messages: read with the claim


class Queue:
    """The queue over an engine whose schema exists (``securemail.schema.create_schema``)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time,
                 audit_log: AuditLog | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.audit_log = audit_log
        self._removed = 0    # bodies and rows removed by this object (settles, purges) ...
        self._scrubbed = 0   # ... up to the last checkpoint that truncated the SQLite WAL

    # --- intake -------------------------------------------------------------
    def enqueue(self, sender: str, recipients_with_hops: Sequence[tuple[str, Any]],
                body: bytes, peer: str = "", meta: Mapping[str, Any] | None = None,
                audit: AuditSpec = None) -> str:
        """Store one message and its deliveries in one transaction; returns the id after commit."""
        return self.enqueue_many(
            [NewMessage(sender, recipients_with_hops, body, peer, meta, audit)])[0]

    def enqueue_many(self, items: Iterable[NewMessage]) -> list[str]:
        """Store several messages in ONE transaction (group commit); all or none.

        Constant statements, each executed once with every row (executemany):
        SQLAlchemy compiles them once, and the cost per message is the rows'.
        """
        items = list(items)
        for item in items:
            _check(item)
        now = float(self.clock())
        ids, messages, deliveries, audits = [], [], [], []
        for item in items:
            mid = uuid.uuid4().hex
            ids.append(mid)
            messages.append(dict(
                id=mid, created_at=now, sender=item.sender, body=item.body,
                size=len(item.body), peer=item.peer,
                meta=json.dumps(dict(item.meta or {}), sort_keys=True)))
            deliveries.extend(
                dict(id=uuid.uuid4().hex, message_id=mid, recipient=rcpt, next_hop=str(hop),
                     state="queued", attempts=0, next_attempt_at=now, lease_owner=None,
                     lease_until=None, last_error="", created_at=now, updated_at=now)
                for rcpt, hop in item.recipients)
            if item.audit is not None:
                audits.append((item.audit, {"message_id": mid}))
        with transaction(self.engine) as conn:
            replays = {ids[i]: items[i].replay for i in admit(conn, [it.replay for it in items], now)}
            if replays:  # accepted, never queued: the record "replay" in place of "accepted"
                messages = [m for m in messages if m["id"] not in replays]
                deliveries = [d for d in deliveries if d["message_id"] not in replays]
                audits = [(replay_audit(spec, replays[i["message_id"]]) if i["message_id"] in replays
                           else spec, i) for spec, i in audits]
            if messages:
                conn.execute(_INSERT_MESSAGE, messages)
                conn.execute(_INSERT_DELIVERY, deliveries)
            self._audit_many(conn, audits)
        return ids

    def _audit_many(self, conn: Connection, specs: list[tuple[AuditSpec, dict[str, str]]]) -> None:
        specs = [(spec, ids) for spec, ids in specs if spec is not None]
        if not specs:
            return
        if self.audit_log is None:
            raise UsageError("audit requested but the queue has no audit log")
        self.audit_log.append_many_in(conn, [(kind, {**ids, **fields}) for (kind, fields), ids in specs])

    def _audit(self, conn: Connection, spec: AuditSpec, **ids: str) -> None:
        if spec is None:
            return
        if self.audit_log is None:
            raise UsageError("audit requested but the queue has no audit log")
        kind, fields = spec
        self.audit_log.append_in(conn, kind, **{**ids, **fields})

    # --- workers ------------------------------------------------------------
    def claim(self, owner: str, limit: int, lease_seconds: float,
              with_bodies: int = 0) -> list[Claim]:
        """Lease up to ``limit`` due deliveries to ``owner``; no two claimers get the same row.

        ``with_bodies``: the bytes of messages up to that size come with their claims
        (read in the same transaction, one query), so a worker needs no second trip.
        """
        now = float(self.clock())
        until = now + lease_seconds
        due = (sa.select(D.c.id)
               .where(D.c.state == "queued", D.c.next_attempt_at <= now,
                      sa.or_(D.c.lease_until.is_(None), D.c.lease_until <= now))
               .order_by(D.c.next_attempt_at).limit(limit)
               .with_for_update(skip_locked=True))  # rendered on PostgreSQL only
        if self.engine.dialect.name == "sqlite":  # a look without the write lock first: an idle
            with transaction(self.engine, write=False) as conn:  # poll must not make intake wait
                if not conn.execute(due).first():
                    return []
        with transaction(self.engine) as conn:
            ids = conn.execute(due).scalars().all()
            if not ids:
                return []
            conn.execute(D.update().where(D.c.id.in_(ids)).values(
                lease_owner=owner, lease_until=until, attempts=D.c.attempts + 1,
                updated_at=now))
            rows = conn.execute(
                sa.select(D.c.id, D.c.message_id, D.c.recipient, D.c.next_hop,
                          D.c.attempts, M.c.sender, M.c.created_at, M.c.size)
                .join(M, M.c.id == D.c.message_id)
                .where(D.c.id.in_(ids)).order_by(D.c.next_attempt_at, D.c.id)).all()
            small = {r.message_id for r in rows if r.size <= with_bodies}
            bodies = dict(conn.execute(sa.select(M.c.id, M.c.body).where(M.c.id.in_(small))).all()
                          ) if small else {}
        return [Claim(r.id, r.message_id, r.recipient, r.next_hop, r.attempts,
                      r.sender, r.created_at, owner, until, bytes(bodies.get(r.message_id) or b"") or None)
                for r in rows]

    def checkpoint(self) -> None:
        """Fold the SQLite WAL into the database (``securemail.db.checkpoint``), and truncate it
        once folded if this object removed something since: its old frames hold the bytes."""
        removed = self._removed
        if db_checkpoint(self.engine, truncate=removed != self._scrubbed):
            self._scrubbed = removed

    def body(self, message_id: str) -> bytes | None:
        """The message bytes, or None if the message is gone or finished (its body removed)."""
        with transaction(self.engine, write=False) as conn:
            data = conn.execute(sa.select(M.c.body).where(M.c.id == message_id)).scalar()
        return None if data is None else (bytes(data) or None)

    def mark_delivered(self, claim: Claim, audit: AuditSpec = None) -> bool:
        return self._settle(claim, self.delivered_values(), audit)

    def defer(self, claim: Claim, error: str, retry_at: float, audit: AuditSpec = None) -> bool:
        return self._settle(claim, self.deferred_values(error, retry_at), audit)

    def bounce(self, claim: Claim, error: str, audit: AuditSpec = None) -> bool:
        return self._settle(claim, {"state": "bounced", "last_error": error}, audit)

    def hold(self, claim: Claim, reason: str, audit: AuditSpec = None) -> bool:
        return self._settle(claim, {"state": "held", "last_error": reason}, audit)

    def _settle(self, claim: Claim, values: dict[str, Any], audit: AuditSpec) -> bool:
        """Apply ``values`` and drop the lease, only if ``claim`` still holds it."""
        return self.settle_many([(claim, values, audit)])[0]

    def settle_many(self, ops: Sequence[tuple[Claim, dict[str, Any], AuditSpec]]) -> list[bool]:
        """Several settles (``values`` as for mark_delivered/defer/...) in ONE transaction.

        Each applies only if its claim still holds the lease; the result says which did.
        The bodies of the messages whose last pending delivery this makes final are removed
        in the same transaction (one more statement, only if a settle was final).
        """
        now = float(self.clock())
        groups: dict[tuple, list[str]] = {}  # same values, owner and lease: one statement
        for claim, values, _ in ops:
            key = (tuple(sorted(values.items())), claim.owner, claim.lease_until)
            groups.setdefault(key, []).append(claim.delivery_id)
        with transaction(self.engine) as conn:
            changed: set[str] = set()
            for (items, owner, until), ids in groups.items():
                values = dict(items)
                changed.update(conn.execute(_settle_statement(tuple(values)), dict(
                    values, b_ids=ids, b_owner=owner, b_until=until, b_now=now)).scalars())
            done = [claim.delivery_id in changed for claim, _, _ in ops]
            finished = {claim.message_id for (claim, values, _), ok in zip(ops, done)
                        if ok and values.get("state") in FINAL_STATES}
            if finished:
                self._removed += conn.execute(_REMOVE_BODIES, {"b_mids": sorted(finished)}).rowcount
            self._audit_many(conn, [(audit, {"message_id": claim.message_id,
                                             "delivery_id": claim.delivery_id})
                                    for (claim, _, audit), ok in zip(ops, done) if ok])
        return done

    @staticmethod
    def delivered_values() -> dict[str, Any]:
        return {"state": "delivered", "last_error": ""}

    @staticmethod
    def deferred_values(error: str, retry_at: float) -> dict[str, Any]:
        return {"last_error": error, "next_attempt_at": retry_at}

    # --- operator -----------------------------------------------------------
    def retry(self, delivery_or_message_id: str, audit: AuditSpec = None) -> int:
        """Requeue for now: one delivery (unless delivered) or a message's non-final ones.

        Deliveries under a live lease are left alone (a worker is on them), and so are those
        of a finished message: its body is gone. Returns how many deliveries were requeued.
        """
        now = float(self.clock())
        ident = delivery_or_message_id
        has_body = sa.select(M.c.id).where(M.c.id == D.c.message_id, _HAS_BODY).exists()
        free = sa.and_(sa.or_(D.c.lease_until.is_(None), D.c.lease_until <= now), has_body)
        values = dict(state="queued", next_attempt_at=now, lease_owner=None,
                      lease_until=None, updated_at=now)
        with transaction(self.engine) as conn:
            res = conn.execute(D.update().where(
                D.c.id == ident, D.c.state != "delivered", free).values(**values))
            if res.rowcount == 0:
                res = conn.execute(D.update().where(
                    D.c.message_id == ident, D.c.state.not_in(FINAL_STATES), free
                ).values(**values))
            if res.rowcount:
                self._audit(conn, audit, target=ident, requeued=res.rowcount)
            return res.rowcount

    def delete(self, message_id: str, audit: AuditSpec = None) -> bool:
        """Remove a message and all its deliveries (operator action)."""
        with transaction(self.engine) as conn:
            conn.execute(D.delete().where(D.c.message_id == message_id))
            if conn.execute(M.delete().where(M.c.id == message_id)).rowcount != 1:
                return False
            self._audit(conn, audit, message_id=message_id)
        self._removed += 1  # the next checkpoint truncates the WAL that still holds the body
        return True

    def list(self, state: str | None = None, limit: int | None = None) -> list[dict]:
        """Deliveries (oldest first) with their message's sender and size, like mailq."""
        q = (sa.select(*_DELIVERY_COLS, M.c.sender, M.c.size)
             .join(M, M.c.id == D.c.message_id).order_by(D.c.created_at, D.c.id))
        if state is not None:
            if state not in STATES:
                raise UsageError(f"unknown state {state!r}")
            q = q.where(D.c.state == state)
        if limit is not None:
            q = q.limit(limit)
        with transaction(self.engine, write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def show(self, message_id: str, with_body: bool = False) -> dict | None:
        """A message's metadata and deliveries (body bytes only if asked), or None."""
        cols = [M.c.id, M.c.created_at, M.c.sender, M.c.size, M.c.peer, M.c.meta]
        with transaction(self.engine, write=False, snapshot=True) as conn:
            msg = conn.execute(sa.select(*cols, *([M.c.body] if with_body else []))
                               .where(M.c.id == message_id)).first()
            if msg is None:
                return None
            rows = conn.execute(sa.select(*_DELIVERY_COLS).where(
                D.c.message_id == message_id).order_by(D.c.created_at, D.c.id)).all()
        out = dict(msg._mapping)
        out["meta"] = json.loads(out["meta"])
        if with_body:
            out["body"] = bytes(out["body"])
        out["deliveries"] = [dict(r._mapping) for r in rows]
        return out

    def stats(self) -> dict[str, int]:
        """Delivery counts by state (every state present, zero if none)."""
        q = sa.select(D.c.state, sa.func.count()).group_by(D.c.state)
        with transaction(self.engine, write=False) as conn:
            counts = dict(conn.execute(q).all())
        return {s: int(counts.get(s, 0)) for s in STATES}

    def purge(self, older_than: float = 0.0, limit: int = PURGE_BATCH,
              audit: AuditSpec = None) -> Purged:
        """One bounded batch: finished messages (every delivery final, all settled ``older_than``
        seconds ago or more) with their deliveries, and the bodies finished messages still have.
        Candidates are found without the write lock, then checked again by key while removed.
        Never touches a message with a pending delivery. ``more``: a batch was full, call again."""
        cutoff = float(self.clock()) - older_than
        recent = sa.select(D.c.id).where(D.c.message_id == M.c.id, D.c.updated_at > cutoff).exists()
        expired_q = sa.select(M.c.id).where(M.c.created_at <= cutoff, ~_PENDING, ~recent)
        leftover_q = sa.select(M.c.id).where(_HAS_BODY, ~_PENDING)
        with transaction(self.engine, write=False) as conn:
            expired = conn.execute(expired_q.limit(limit)).scalars().all()
            leftover = conn.execute(leftover_q.limit(limit)).scalars().all()
        if not expired and not leftover:
            return Purged()
        with transaction(self.engine) as conn:
            bodies = conn.execute(_REMOVE_BODIES, {"b_mids": leftover}).rowcount if leftover else 0
            ids = conn.execute(expired_q.where(M.c.id.in_(expired)).with_for_update(skip_locked=True)
                               ).scalars().all() if expired else []
            deliveries = conn.execute(D.delete().where(D.c.message_id.in_(ids))).rowcount if ids else 0
            messages = conn.execute(M.delete().where(M.c.id.in_(ids))).rowcount if ids else 0
            out = Purged(messages, deliveries, bodies, max(len(expired), len(leftover)) >= limit)
            if audit is not None and (out.rows or out.bodies):
                kind, fields = audit
                self._audit(conn, (kind, {**fields, "messages": messages, "deliveries": deliveries,
                                          "bodies": bodies}))
        self._removed += out.rows + out.bodies
        return out


_DELIVERY_COLS = (D.c.id, D.c.message_id, D.c.recipient, D.c.next_hop, D.c.state,
                  D.c.attempts, D.c.next_attempt_at, D.c.lease_owner, D.c.lease_until,
                  D.c.last_error, D.c.created_at, D.c.updated_at)


def _check(item: NewMessage) -> None:
    if not item.recipients:
        raise UsageError("a message needs at least one recipient")
    if not isinstance(item.body, (bytes, bytearray, memoryview)):
        raise UsageError("message body must be bytes")
    for pair in item.recipients:
        if len(pair) != 2 or not (isinstance(pair[0], str) and pair[0] and str(pair[1])):
            raise UsageError("recipients must be (address, next_hop) pairs")
