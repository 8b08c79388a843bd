"""gateway restore: a fresh home from a backup (``admin/backup.py``), its database in place.

Everything is checked before anything is written: the backup's SHA-256s, a fresh home, an empty
target database (a SQLite file that does not exist yet; a PostgreSQL schema without tables).
Then the files, the configuration (pointed at the new home, or at ``--database-url``), and the
database: the SQLite copy, or ``pg_restore`` into the schema of the same name. Deliveries the old
gateway had in flight (leased) are released, so the restored one makes them at once.
"""

from __future__ import annotations

import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from .. import migrations
from ..audit import AuditLog
from ..db import make_engine, transaction
from ..errors import UsageError
from ..home import Home, write_atomic
from ..queue.models import deliveries as D
from .backup import Backup, copy_database_file, fresh_home, read_backup, rehomed, restore_files
from .backup_db import Database, pg_restore, require_empty


@dataclass
class Restored:
    home: Path
    database: str                  # the URL, password hidden
    revision: str | None           # the restored schema's (None: 0.1.0's, before migrations)
    pending: int                   # deliveries still to make
    notes: list[str] = field(default_factory=list)


def target_database(found: Backup, home: Home, database_url: str | None) -> tuple[str, Database]:
    """The restored configuration's text, and the database it names."""
    config = found.directory / "home" / "securemail.toml"
    if not config.is_file():
        raise UsageError(f"{found.directory}: the backup has no securemail.toml")
    text = rehomed(config.read_text(), found.manifest["home"], home.path, database_url)
    url = tomllib.loads(text).get("database", {}).get("url", home.default_database_url)
    db = Database.of(url)
    if db.kind != found.manifest["database"]["kind"]:
        raise UsageError(f"the backup holds a {found.manifest['database']['kind']} database; "
                         f"{db.kind} cannot take it")
    if db.kind == "postgresql" and db.schema != found.manifest["database"]["schema"]:
        raise UsageError(f"the backup is of the PostgreSQL schema {found.manifest['database']['schema']}: "
                         "restore it into a schema of that name (search_path in --database-url)")
    return text, db


def restore(directory: Path, home: Home, *, database_url: str | None = None, engine_for=make_engine) -> Restored:
    """Restore the backup in ``directory`` into the fresh ``home``."""
    found = read_backup(directory)
    fresh_home(home)
    text, db = target_database(found, home, database_url)
    engine = None
    if db.kind == "sqlite":
        if db.path.exists():
            raise UsageError(f"{db.path} exists: restore into an empty database")
    else:
        engine = engine_for(db.url)
        with transaction(engine) as conn:
            require_empty(set(sa.inspect(conn).get_table_names(schema=db.schema)), sa.engine.make_url(db.url)
                          .render_as_string(hide_password=True))
    try:
        notes = restore_files(found, home)
        write_atomic(home.config_file, text.encode(), 0o600)
        source = found.directory / found.manifest["database"]["file"]
        if db.kind == "sqlite":
            copy_database_file(source, db.path)
            engine = engine_for(db.url)
        else:
            with transaction(engine) as conn:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
            with tempfile.TemporaryDirectory(prefix="securemail-restore-") as work:
                pg_restore(db, source, Path(work))
        with transaction(engine) as conn:
            revision = migrations.state(conn).current
            released, pending = release_leases(conn)
            if conn.dialect.has_table(conn, "audit_head"):  # the chain goes on: say where it came from
                AuditLog(engine).append_in(conn, "restored", backup_created=found.manifest["created"],
                                           backup_home=found.manifest["home"], released=released)
    finally:
        if engine is not None:
            engine.dispose()
    if released:
        notes.append(f"{released} deliveries were in flight at backup time: the restored gateway makes them "
                     "again (a recipient may get those twice)")
    return Restored(home.path, sa.engine.make_url(db.url).render_as_string(hide_password=True), revision,
                    pending, notes)


def release_leases(conn) -> tuple[int, int]:
    """Deliveries leased by the old gateway's workers are due again at once: nobody in the restored
    world holds those leases (else they would wait ``delivery.lease_seconds``). Returns how many were
    released, and how many deliveries are still to make."""
    released = conn.execute(D.update().where(D.c.state == "queued", D.c.lease_owner.is_not(None))
                            .values(lease_owner=None, lease_until=None)).rowcount
    pending = conn.execute(sa.select(sa.func.count()).select_from(D).where(D.c.state == "queued")).scalar()
    return int(released), int(pending)
