"""The database schema of a home or a gateway: every table, created in one place.

``create_schema(engine)`` is called once by the composition roots that open a home
or a gateway (``app.open_home``, ``app.open_gateway``); the stores' constructors
only use their tables, and a child process of serve finds them made by its parent.
It is idempotent: existing tables are left as they are. It also writes the audit
chain's head row, and binds the keys of a home made before key bindings existed
(``keys.binding.migrate``, once: in the transaction that creates ``key_bindings``).
"""

from __future__ import annotations

import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import audit
from .db import transaction
from .keys import binding, directory, publish, sources, store
from .queue import models, replay

METADATA = (models.metadata, replay.metadata, audit.metadata, store.metadata, binding.metadata,
            directory.metadata, sources.metadata, publish.metadata)


def create_schema(engine: Engine, clock: Callable[[], float] = time.time) -> None:
    """Create every missing table, the audit head, and bind the keys of a home older than bindings."""
    with transaction(engine) as conn:
        if conn.dialect.name == "postgresql":  # DDL is transactional; serialize creators
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('securemail.schema'))"))
        fresh = not sa.inspect(conn).has_table(binding.bindings_table.name)
        for metadata in METADATA:
            metadata.create_all(conn)
        audit.init_head(conn)
        if fresh:
            _bind_older_keys(conn, audit.AuditLog(engine, clock), clock())


def _bind_older_keys(conn: Connection, log: audit.AuditLog, now: float) -> None:
    """A home made before bindings: bind its keys once, from where they came; audit dropped pins."""
    for address, fpr in binding.migrate(conn, store.keys_table, store.pins_table, now):
        log.append_in(conn, "key-pin-dropped", address=address, fingerprint=fpr, reason="no binding")


def gaps(inspector) -> tuple[list[str], list[str]]:
    """The tables this version uses that the database lacks, and the columns (``table.column``)
    lacking from the tables it has (``gateway check``, and the gateway's ``/readyz``)."""
    have = set(inspector.get_table_names())
    tables, columns = [], []
    for table in (t for metadata in METADATA for t in metadata.sorted_tables):
        if table.name not in have:
            tables.append(table.name)
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        columns += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    return tables, columns
