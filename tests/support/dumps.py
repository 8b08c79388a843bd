"""The SQL dumps of a database made by securemail 0.1.0 (tests/fixtures/make_dumps.py), loaded.

``load_release(kind, url)`` fills an empty database (a SQLite file, or the PostgreSQL schema that
``url``'s search_path names) with the dump of ``kind`` ("sqlite" or "postgresql"): a gateway's
tables as 0.1.0 left them, with queued, deferred, in-flight and delivered mail, and no
``alembic_version``. ``pending(url)`` is what that mail still owes, read with plain SQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASE = "0.1.0"
DOMAIN = "interieur.gouv.fr"


def dump(kind: str) -> str:
    return (FIXTURES / f"release-{RELEASE}-{kind}.sql").read_text()


def load_release(kind: str, url: str) -> None:
    import sqlalchemy as sa
    u = sa.engine.make_url(url)
    if kind == "sqlite":
        db = sqlite3.connect(u.database)
        try:
            db.executescript(dump(kind))
        finally:
            db.close()
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute(dump(kind))  # several statements, no parameters
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def pending(url: str) -> list[dict]:
    """The deliveries not yet final: id, recipient, state, attempts, lease_owner, and the
    Message-ID of their message's body."""
    import sqlalchemy as sa
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT d.id, d.recipient, d.state, d.attempts, d.lease_owner, m.body FROM deliveries d "
                "JOIN messages m ON m.id = d.message_id WHERE d.state IN ('queued', 'held')")).all()
    finally:
        engine.dispose()
    return [{"id": r.id, "recipient": r.recipient, "state": r.state, "attempts": r.attempts,
             "lease_owner": r.lease_owner, "message_id": message_id(bytes(r.body))} for r in rows]


def message_id(data: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no Message-ID")


def domain_key(url: str) -> str:
    """The fingerprint of the domain's secret key in the loaded database (its config names it)."""
    import sqlalchemy as sa
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT fingerprint FROM keys WHERE secret")).scalar_one()
    finally:
        engine.dispose()
