"""Schema migrations: the revisions of the database schema (Alembic), read and applied under a lock.

The revisions are in ``versions/``; ``env.py`` runs them on the connection its caller holds, so
nothing here opens a database, reads an ``alembic.ini`` or knows a URL. ``schema.create_schema``
is the one caller that changes a database: a fresh one gets every table and is stamped at the
head; an older one is upgraded (``securemail gateway migrate``, or ``database.auto_migrate``)
in the caller's transaction, which holds the lock (``lock``), or refused (``SchemaOutdated``).

A database that has securemail's tables but no ``alembic_version`` table was made by 0.1.0,
before migrations existed: it is at the baseline, whose upgrade only creates the tables of 0.1.0
it lacks (a home older than key bindings lacks ``key_bindings``).

Every schema change comes with a revision here; ``tests/unit/test_migrations.py`` fails when the
tables the revisions make differ from the models (``schema.METADATA``). To add one: change the
model, write ``versions/NNNN_what.py`` like ``0002_messages_created.py`` (``revision = "NNNN"``,
``down_revision`` the previous head; ``op`` calls, which on SQLite run in batch mode), and append
``"NNNN"`` to ``REVISIONS``. ``alembic.autogenerate.compare_metadata`` (as that test calls it)
lists what the revision must do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from securemail.errors import ConfigError

# Alembic is imported where a schema is changed (upgrade, stamp): importing it costs about half a
# second and 11 MiB, which every command and process would pay to read one row otherwise.

HERE = Path(__file__).resolve().parent
# every revision in versions/, oldest first; the last is the head this version needs
# (tests/unit/test_migrations.py checks this list against the files)
REVISIONS = ("0001", "0002")
BASELINE, HEAD = REVISIONS[0], REVISIONS[-1]
VERSION_TABLE = "alembic_version"
# the tables of 0.1.0: a database holding any of them and no alembic_version is at the baseline
RELEASE_TABLES = frozenset({
    "messages", "deliveries", "replay_seen", "audit", "audit_head", "keys", "key_addresses", "pins",
    "key_bindings", "directory", "key_sources", "publish_nonces"})


def alembic_config(connection: Connection | None = None, target_metadata=None):
    """Alembic's configuration, made here: the scripts in this package, ``connection`` for env.py."""
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(HERE / "versions"))
    cfg.attributes["connection"] = connection
    cfg.attributes["target_metadata"] = target_metadata
    return cfg


@functools.lru_cache(maxsize=1)
def scripts():
    """Alembic's view of the revisions (read once per process: they are files of this package)."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config())


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is: its revision (None: none recorded), and the head."""
    current: str | None
    head: str
    empty: bool = False      # no securemail table at all: create_schema makes and stamps it
    known: bool = True       # its revision is one of ours (False: made by a newer securemail)

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.empty:
            return "no schema yet"
        if self.current is None:
            return f"0.1.0, before migrations (baseline {BASELINE})"
        return f"revision {self.current}" + ("" if self.known else " (unknown to this version)")


def state(conn: Connection) -> SchemaState:
    """The schema state of the database ``conn`` is on (reads only)."""
    names = set(sa.inspect(conn).get_table_names())
    if VERSION_TABLE not in names:
        return SchemaState(None, HEAD, empty=not names & RELEASE_TABLES)
    rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    current = rows[0] if len(rows) == 1 else None
    if len(rows) > 1:  # branches: none of ours has any
        return SchemaState(",".join(sorted(rows)), HEAD, known=False)
    return SchemaState(current, HEAD, empty=current is None and not names & RELEASE_TABLES,
                       known=current is None or current in REVISIONS)


def lock(conn: Connection) -> None:
    """Serialize schema changes on this database until ``conn``'s transaction ends.

    PostgreSQL: a transaction-scoped advisory lock (``pg_advisory_xact_lock``), one per schema, so
    a second migrator (another serve process, another node) waits, then finds the head. SQLite:
    ``db.transaction`` began with ``BEGIN IMMEDIATE``, which holds the database's write lock (in
    WAL mode the same as ``BEGIN EXCLUSIVE``); a second migrator waits on ``busy_timeout``."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('securemail.schema.' || current_schema()))"))


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Apply the revisions up to ``revision`` in ``conn``'s transaction (committed by the caller)."""
    from alembic import command
    command.upgrade(alembic_config(conn), revision)


def downgrade(conn: Connection, revision: str) -> None:
    from alembic import command
    command.downgrade(alembic_config(conn), revision)


# Alembic's own version table, as its ``stamp`` makes it (alembic.runtime.migration)
_VERSIONS = sa.Table(VERSION_TABLE, sa.MetaData(),
                     sa.Column("version_num", sa.String(32), nullable=False),
                     sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


def stamp_head(conn: Connection) -> None:
    """Record the head on a schema just made from the models, as ``alembic stamp head`` would
    (without loading Alembic: every new home does this)."""
    _VERSIONS.create(conn, checkfirst=True)
    conn.execute(_VERSIONS.delete())
    conn.execute(_VERSIONS.insert().values(version_num=HEAD))


class SchemaOutdated(ConfigError):
    """The database's schema is not the one this version uses; nothing was changed."""
    default_message = "the database schema is not this version's"

    def __init__(self, found: SchemaState, fix: str = "securemail gateway migrate") -> None:
        self.state = found
        if not found.known:
            text = (f"the database schema is at {found.describe()}: a newer securemail made it; "
                    f"run that version (this one needs revision {found.head})")
        else:
            text = (f"the database schema is at {found.describe()}, this version needs revision "
                    f"{found.head}: stop the gateway, back it up, and run `{fix}` "
                    "(or set database.auto_migrate = true)")
        super().__init__(text)
