"""The books: what the sending gateway's queue holds, and the invariant over what clients were told.

``Ledger`` reads a gateway's queue from outside (its configured database,
SQLite or PostgreSQL), also while the gateway is dead. ``tally`` checks
acknowledged ⊆ stored ⊆ delivered ∪ queued ∪ bounced and counts duplicates,
each of which must be a delivery that was in flight (leased) when a gateway
process was killed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from securemail.config import CoreConfig
from securemail.db import make_engine
from securemail.home import Home
from securemail.queue import Queue

from .sides import message_id

KEPT = ("queued", "bounced", "held")


class Ledger:
    """A read-only view of one gateway home's queue."""

    def __init__(self, home: Path) -> None:
        self.engine = make_engine(CoreConfig.load(Home(Path(home))).database_url)
        self.queue = Queue(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rows(self) -> list[dict]:
        return self.queue.list()

    def states(self, qid: str) -> list[str]:
        return [r["state"] for r in self.rows() if r["message_id"] == qid]

    def in_flight(self) -> set[str]:
        """Message-IDs of deliveries claimed under a lease and not settled (right after a kill)."""
        qids = {r["message_id"] for r in self.rows() if r["state"] == "queued" and r["lease_owner"]}
        return set(self.message_ids(qids).values())

    def message_ids(self, qids) -> dict[str, str]:
        """queue id -> the Message-ID in the stored (encrypted) message's outer headers."""
        out = {}
        for q in qids:
            info = self.queue.show(q, with_body=True)
            if info is not None:
                out[q] = message_id(info["body"])
        return out


@dataclass
class Tally:
    acked: int
    stored: int
    delivered: int
    queued: int
    bounced: int
    held: int
    duplicated: int
    lost: int
    not_stored: list[str] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    unexplained_duplicates: list[str] = field(default_factory=list)
    in_doubt_delivered: int = 0   # DATA sent, reply lost in a kill, delivered anyway (allowed)

    def figures(self) -> dict:
        d = asdict(self)
        for k in ("not_stored", "lost_ids", "unexplained_duplicates"):
            d[k] = d[k][:10]
        return d


def tally(acked: dict[str, str], accepted: Counter, rows: list[dict], *,
          in_flight: set[str] = frozenset(), in_doubt: set[str] = frozenset()) -> Tally:
    """``acked``: Message-ID -> queue id from the 250; ``accepted``: Message-ID -> times the receiver took it."""
    by_qid: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_qid[r["message_id"]].add(r["state"])
    not_stored = sorted(m for m, q in acked.items() if q not in by_qid)
    delivered = {m for m in acked if accepted[m] > 0}
    waiting = {m: by_qid.get(q, set()) & set(KEPT) for m, q in acked.items() if m not in delivered}
    lost = sorted(m for m, kept in waiting.items() if not kept)
    dups = {m: c - 1 for m, c in accepted.items() if c > 1}
    return Tally(
        acked=len(acked), stored=len(acked) - len(not_stored), delivered=len(delivered),
        queued=sum("queued" in k for k in waiting.values()),
        bounced=sum("bounced" in k for k in waiting.values()),
        held=sum("held" in k for k in waiting.values()),
        duplicated=sum(dups.values()), lost=len(lost), not_stored=not_stored, lost_ids=lost,
        unexplained_duplicates=sorted(m for m in dups if m not in in_flight),
        in_doubt_delivered=sum(1 for m in in_doubt if accepted[m] > 0))
