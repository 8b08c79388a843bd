"""Append-only, hash-chained audit log of the gateway's decisions (metadata, never content).

Each record is ``(seq, at, kind, fields, prev_hash, hash)`` with
``hash = sha256(prev_hash || canonical_json([seq, at, kind, fields]))`` and
``prev_hash`` of the first record = 64 zeros. The single-row table
``audit_head`` holds the last ``(seq, hash)`` and is updated in the same
transaction as each append, so ``verify()`` detects edits, deletions, reordering
*and* truncation of the tail. An attacker who rewrites the whole chain and the
head consistently is not detected by the database alone: publish ``head()``
elsewhere to anchor it (``securemail audit checkpoint``, checkpoint.py), then
``verify(at=...)`` gives the hashes of the anchored records to compare.

Concurrency: ``append`` locks the head row (``SELECT ... FOR UPDATE`` on
PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), so appenders are serialized and seq
has no gaps. ``append_in(conn, ...)`` writes a record inside the caller's
transaction, so a queue change and its audit record commit or roll back
together (see ``Queue``'s ``audit=(kind, fields)`` arguments). Keep that
transaction short: the head row stays locked until it commits.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from securemail.db import transaction
from securemail.errors import TemporaryFailure, UsageError

GENESIS = "0" * 64

metadata = sa.MetaData()

audit = sa.Table(
    "audit", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),      # canonical JSON, sorted keys
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.CheckConstraint("id = 1", name="audit_head_single_row"),
)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    kind: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    count: int                        # records walked before the first bad one (all, when ok)
    first_bad_seq: int | None = None
    reason: str = ""
    hashes: dict[int, str] = field(default_factory=dict)  # seq -> hash of the walked records asked for
    read_all: bool = True             # every record was walked (a failure, if any, is at the head)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, seq: int, at: float, kind: str, fields: dict) -> str:
    """The record hash: sha256 over the previous hash and the canonical record JSON."""
    data = prev_hash.encode("ascii") + _json([seq, at, kind, fields]).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def init_head(conn: Connection) -> None:
    """Insert the head row (seq 0, genesis hash) if it is missing; called by create_schema."""
    if conn.execute(sa.select(audit_head.c.id)).first() is None:
        conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))


# Constant statements (parameters bound at execution): compiled once, cached by SQLAlchemy.
_LOCK_HEAD = sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
_INSERT = audit.insert()
_ADVANCE_HEAD = (audit_head.update().where(audit_head.c.id == 1)
                 .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash")))


class AuditLog:
    """The audit log over an engine; ``clock`` returns epoch seconds."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock

    def append(self, kind: str, /, **fields: Any) -> AuditRecord:
        """Append one record in its own transaction; returns after commit."""
        with transaction(self.engine) as conn:
            return self.append_in(conn, kind, **fields)

    def append_in(self, conn: Connection, kind: str, /, **fields: Any) -> AuditRecord:
        """Append one record inside the caller's (write) transaction."""
        return self.append_many_in(conn, [(kind, fields)])[0]

    def append_many_in(self, conn: Connection, entries: list[tuple[str, dict[str, Any]]]) -> list[AuditRecord]:
        """Append several records, in order, inside the caller's (write) transaction.

        The same chain as one ``append_in`` per record, with one read and one update
        of the head and one multi-row insert (group commits write dozens at a time).
        """
        staged = []
        for kind, fields in entries:
            if not kind or len(kind) > 64:
                raise UsageError("audit kind must be 1-64 characters")
            try:
                text = _json(fields)
            except (TypeError, ValueError) as err:
                raise UsageError("audit fields must be plain JSON metadata", detail=str(err)) from err
            staged.append((kind, text, json.loads(text)))  # hash exactly what verify() will read back
        if not staged:
            return []
        head = conn.execute(_LOCK_HEAD).first()
        if head is None:
            raise TemporaryFailure(detail="audit_head row missing; run create_schema")
        seq, prev, at = head.seq, head.hash, float(self.clock())
        out, rows = [], []
        for kind, text, fields in staged:
            seq += 1
            digest = chain_hash(prev, seq, at, kind, fields)
            rows.append(dict(seq=seq, at=at, kind=kind, fields=text, prev_hash=prev, hash=digest))
            out.append(AuditRecord(seq, at, kind, fields, prev, digest))
            prev = digest
        conn.execute(_INSERT, rows)
        conn.execute(_ADVANCE_HEAD, dict(new_seq=seq, new_hash=prev))
        return out

    def head(self) -> tuple[int, str]:
        """The last (seq, hash): publish it elsewhere to anchor the chain."""
        with transaction(self.engine, write=False) as conn:
            row = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)).first()
        return (row.seq, row.hash) if row else (0, GENESIS)

    def records(self, since: int | None = None, limit: int | None = None) -> list[AuditRecord]:
        """Records with seq > ``since`` in seq order, at most ``limit`` of them."""
        q = sa.select(audit).order_by(audit.c.seq)
        if since is not None:
            q = q.where(audit.c.seq > since)
        if limit is not None:
            q = q.limit(limit)
        with transaction(self.engine, write=False) as conn:
            rows = conn.execute(q).all()
        return [AuditRecord(r.seq, r.at, r.kind, json.loads(r.fields), r.prev_hash, r.hash)
                for r in rows]

    def last(self, kind: str) -> AuditRecord | None:
        """The latest record of ``kind`` (``gateway check`` compares the installed manifest with the
        last ``manifest-change``), None when there is none."""
        q = sa.select(audit).where(audit.c.kind == kind).order_by(audit.c.seq.desc()).limit(1)
        with transaction(self.engine, write=False) as conn:
            r = conn.execute(q).first()
        return AuditRecord(r.seq, r.at, r.kind, json.loads(r.fields), r.prev_hash, r.hash) if r else None

    def verify(self, at=()) -> AuditReport:
        """Walk the chain from seq 1 and compare its end with the head row; ``at``: the seqs whose
        hashes the report keeps (checkpointed heads), among the records walked."""
        with transaction(self.engine, write=False, snapshot=True) as conn:
            head = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)).first()
            rows = conn.execute(sa.select(audit).order_by(audit.c.seq),
                                execution_options={"yield_per": 1000})
            report = _walk(rows, head, frozenset(at))
            rows.close()
        return report


def _walk(rows, head, at: frozenset[int] = frozenset()) -> AuditReport:
    expected, prev, count, hashes = 1, GENESIS, 0, {}

    def bad(seq: int | None, reason: str, read_all: bool = False) -> AuditReport:
        return AuditReport(False, count, seq, reason, hashes, read_all)
    for r in rows:
        if r.seq != expected:
            if r.seq > expected:
                return bad(expected, f"record {expected} is missing")
            return bad(r.seq, "sequence out of order")
        if r.prev_hash != prev:
            return bad(r.seq, "chain broken: prev_hash does not match")
        try:
            fields = json.loads(r.fields)
        except ValueError:
            return bad(r.seq, "fields are not valid JSON")
        if chain_hash(prev, r.seq, r.at, r.kind, fields) != r.hash:
            return bad(r.seq, "record hash mismatch: record was altered")
        prev, expected, count = r.hash, expected + 1, count + 1
        if r.seq in at:
            hashes[r.seq] = r.hash
    if head is None:
        return bad(None, "audit head is missing", True)
    if head.seq > count:
        return bad(count + 1, f"truncated: head is at {head.seq}, log ends at {count}", True)
    if head.seq < count or head.hash != prev:
        return bad(head.seq + 1 if head.seq < count else count, "head does not match the last record", True)
    return AuditReport(True, count, hashes=hashes)
