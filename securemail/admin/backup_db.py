"""The database part of a backup: a consistent online copy (SQLite backup API, pg_dump) and its return.

SQLite: ``sqlite3.Connection.backup`` copies every page in one step, inside one read transaction:
the copy is the database as of one commit, while the gateway goes on reading and writing (WAL).
PostgreSQL: ``pg_dump --format=custom`` of the gateway's schema (the search_path of
``database.url``, else ``public``), which reads everything in one REPEATABLE READ snapshot;
``pg_restore`` puts it into an empty database, into a schema of the same name. The password, if
the URL has one, goes to the tools in ``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ..errors import ConfigError, UsageError

SQLITE_FILE, PG_FILE = "database.sqlite", "database.pgdump"
BUSY_MS = 30_000            # how long the copy waits for SQLite's locks (a checkpoint, a writer)
_SEARCH_PATH = re.compile(r"-c\s*search_path=([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Database:
    """Where a home's database is: a SQLite file, or a PostgreSQL database and schema."""
    url: str
    kind: str                  # "sqlite" | "postgresql"
    path: Path | None = None   # SQLite
    schema: str = "public"     # PostgreSQL

    @classmethod
    def of(cls, url: str) -> "Database":
        u = sa.engine.make_url(url)
        if u.get_backend_name() == "sqlite":
            if not u.database or u.database == ":memory:" or u.database.startswith("file:"):
                raise ConfigError(f"database.url {url!r} is not a SQLite file that can be backed up")
            return cls(url, "sqlite", path=Path(u.database).expanduser())
        if u.get_backend_name() != "postgresql":
            raise ConfigError(f"backups know SQLite and PostgreSQL, not {u.get_backend_name()}")
        found = _SEARCH_PATH.search(str(u.query.get("options", "")))
        return cls(url, "postgresql", schema=found.group(1) if found else "public")

    @property
    def file(self) -> str:
        return SQLITE_FILE if self.kind == "sqlite" else PG_FILE

    def side_files(self) -> set[Path]:
        """The SQLite file and its journal files (left out of the copy of the home's files)."""
        if self.path is None:
            return set()
        return {self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))}


def copy_sqlite(src: Path, dest: Path) -> None:
    """One consistent copy of the SQLite database ``src`` at ``dest`` (0600), checked whole."""
    if not src.is_file():
        raise ConfigError(f"no database at {src}")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    source = sqlite3.connect(src, timeout=BUSY_MS / 1000)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)  # every page in one step: one read transaction, one commit's state
            target.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal beside the copy
            if target.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise ConfigError(f"the copy of {src} does not pass SQLite's integrity check")
        finally:
            target.close()
    finally:
        source.close()
    with open(dest, "rb") as f:
        os.fsync(f.fileno())


def sqlite_revision(path: Path) -> str | None:
    """The schema revision recorded in a SQLite file (None: 0.1.0's, before migrations)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        db.close()
    return row[0] if row else None


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for the tools (no password in it), and their environment."""
    u = sa.engine.make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"{name} is needed to back up or restore a PostgreSQL database: install "
                          "the PostgreSQL client tools (Debian: postgresql-client) of the server's version")
    return path


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line][-3:]
        raise ConfigError(f"{what} failed: {' / '.join(lines) or f'exit {done.returncode}'}")


def pg_dump(db: Database, dest: Path) -> None:
    """``pg_dump --format=custom`` of the gateway's schema into ``dest`` (0600)."""
    uri, env = _libpq(db.url)
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--schema={db.schema}",
          f"--file={dest}", f"--dbname={uri}"], env, "pg_dump")


def pg_restore(db: Database, src: Path, workdir: Path) -> None:
    """``pg_restore`` of ``src`` into ``db``'s schema, created if missing, in one transaction.
    The dump's own CREATE SCHEMA is left out, so that a schema made beforehand is used as it is."""
    uri, env = _libpq(db.url)
    tool = _tool("pg_restore")
    listing = subprocess.run([tool, "--list", str(src)], env=env, capture_output=True, text=True, check=True).stdout
    entries = workdir / "restore.list"
    entries.write_text("".join(line + "\n" for line in listing.splitlines() if " SCHEMA - " not in line))
    _run([tool, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
          f"--use-list={entries}", f"--dbname={uri}", str(src)], env, "pg_restore")


def require_empty(names: set[str], where: str) -> None:
    """A restore goes into an empty database: never over a gateway's tables."""
    if names:
        raise UsageError(f"{where} already has tables ({', '.join(sorted(names)[:4])}...): restore into an "
                         "empty database, or give another one with --database-url")
