"""The database schema of a home or a gateway: every table, created or upgraded in one place.

``create_schema(engine)`` is called once by the composition roots that open a home or a
gateway (``app.open_home``, ``app.open_gateway``) and by ``securemail gateway migrate``; the
stores' constructors only use their tables, and a child process of serve finds them made by its
parent. Under the migration lock (``migrations.lock``), in one transaction:

- a fresh database gets every table of the models and is stamped at the head revision;
- a database at the head gets any table it lacks (nothing else changes);
- an older one (a revision before the head, or 0.1.0's, with no revision) is upgraded with the
  revisions of ``securemail/migrations`` when ``migrate`` is true, and refused otherwise
  (``migrations.SchemaOutdated``, nothing changed); one made by a newer securemail is refused.

It also writes the audit chain's head row, audits an upgrade (``schema-migrated``), and binds the keys of a home made before key bindings
existed (``keys.binding.migrate``, once: in the transaction that creates ``key_bindings``).
"""

from __future__ import annotations

import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import audit, migrations
from .db import transaction
from .keys import binding, directory, publish, sources, store
from .queue import models, replay

METADATA = (models.metadata, replay.metadata, audit.metadata, store.metadata, binding.metadata,
            directory.metadata, sources.metadata, publish.metadata)


def create_schema(engine: Engine, clock: Callable[[], float] = time.time, *, migrate: bool = False,
                  fix: str = "securemail gateway migrate") -> migrations.SchemaState:
    """Create or upgrade the schema (see the module's text); the state it was in before.

    ``migrate``: upgrade an older schema; otherwise raise ``migrations.SchemaOutdated``, whose
    message tells the operator to run ``fix``."""
    with transaction(engine) as conn:
        migrations.lock(conn)
        before = migrations.state(conn)
        if not before.known or not (before.empty or before.up_to_date or migrate):
            raise migrations.SchemaOutdated(before, fix)
        missing_bindings = not sa.inspect(conn).has_table(binding.bindings_table.name)
        if not before.empty and not before.up_to_date:
            migrations.upgrade(conn)
        for metadata in METADATA:
            metadata.create_all(conn)
        if before.empty:
            migrations.stamp_head(conn)
        audit.init_head(conn)
        log = audit.AuditLog(engine, clock)
        if not before.empty and not before.up_to_date:
            log.append_in(conn, "schema-migrated", before=before.current or f"{migrations.BASELINE} (0.1.0)",
                          after=migrations.HEAD)
        if missing_bindings:
            _bind_older_keys(conn, log, clock())
    return before


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
