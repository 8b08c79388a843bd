"""Replays from member gateways: a message seen once per member and recipient is accepted again, never queued again.

A member gateway that sends the same message twice (its 250 was lost, or it
was made to resend) gets 250 both times; the second copy is dropped and
audited ``replay``. What counts as the same message is the member domain, the
recipient and the Message-ID fields (signed and oversigned by the member's
DKIM signature, so only that member can choose them); a message without a
Message-ID is known by the digest of its bytes, which is what the sending
gateway resends after a lost 250 (it stores the signed body and sends it as
it is). A copy counts as a replay for ``window`` seconds after the first was
committed: the sender's retry lifetime (``[retry] give_up_after``), after which
no gateway resends it. Older entries expire and are removed.

The first copy is recorded as seen in the transaction that commits it
(``admit``, called by ``Queue.enqueue_many``), never before: a crash before
that commit leaves neither the message nor the record, so the sender's retry
is accepted as the first copy, not dropped. On PostgreSQL two copies
committing at the same time meet on the primary key: the upsert of the second
waits for the first and then finds it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

seen = sa.Table(
    "replay_seen", metadata,
    sa.Column("key", sa.String(64), primary_key=True),          # Seen.key
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("replay_seen_expiry", "expires_at"),
    sqlite_with_rowid=False,  # one B-tree keyed by the key, not a rowid table plus an index on it
)

_EXPIRED = seen.delete().where(seen.c.expires_at <= sa.bindparam("b_now"))


@dataclass(frozen=True)
class Seen:
    """What makes a queued message a replay: ``key`` seen within ``window`` seconds."""
    key: str        # SHA-256 hex of member domain, Message-IDs (or message digest), recipients
    window: float


def message_key(domain: str, message_ids: Iterable[str], data: bytes) -> str:
    """The key of one received message from member ``domain``: its Message-ID values, or the
    digest of its bytes when it has none."""
    ids = [" ".join(v.split()) for v in message_ids]
    what = "\n".join(["id", *ids]) if ids else "sha256\n" + hashlib.sha256(data).hexdigest()
    return hashlib.sha256(f"{domain.lower()}\n{what}".encode("utf-8", "surrogateescape")).hexdigest()


def seen_for(message: tuple[str, float] | None, recipients: Iterable[str]) -> Seen | None:
    """The ``Seen`` of one queue item of a message (``(message_key, window)``) for its recipients."""
    if message is None:
        return None
    key, window = message
    rcpts = "\n".join(sorted(r.lower() for r in recipients))
    return Seen(hashlib.sha256(f"{key}\n{rcpts}".encode("utf-8", "surrogateescape")).hexdigest(), window)


def admit(conn: Connection, items: Sequence[Seen | None], now: float) -> set[int]:
    """Record each ``Seen`` (None: not a member's message) as seen, in the caller's transaction;
    the positions of those already seen and not expired: the replays, not to be queued.

    One upsert for the whole batch (the first of equal keys in it goes in, the others are replays)."""
    first: dict[str, int] = {}
    for i, s in enumerate(items):
        if s is not None:
            first.setdefault(s.key, i)
    if not first:
        return set()
    conn.execute(_EXPIRED, {"b_now": now})
    rows = [{"key": k, "expires_at": now + items[i].window, "b_now": now} for k, i in first.items()]
    recorded = set(conn.execute(_upsert(conn.dialect.name), rows).scalars())
    return {i for i, s in enumerate(items)
            if s is not None and (first[s.key] != i or s.key not in recorded)}


@functools.lru_cache(maxsize=2)
def _upsert(dialect: str):
    """INSERT the key, or renew an expired one; returns its row, or none for a live one (a replay)."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(seen)
    return insert.on_conflict_do_update(
        index_elements=[seen.c.key], set_={"expires_at": insert.excluded.expires_at},
        where=seen.c.expires_at <= sa.bindparam("b_now")).returning(seen.c.key)


def replay_audit(spec: tuple[str, dict] | None, s: Seen) -> tuple[str, dict]:
    """The audit record of a dropped replay: the accepted record's fields, under ``replay``."""
    fields = dict(spec[1]) if spec is not None else {}
    return "replay", {**fields, "replay_of": s.key[:16]}


__all__ = ["Seen", "admit", "message_key", "metadata", "replay_audit", "seen", "seen_for"]
