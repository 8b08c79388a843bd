"""Database engines for the queue and the audit log: SQLite tuned for durability, or PostgreSQL.

``make_engine(url)`` builds the engine; ``transaction(engine)`` is the one way the
queue and the audit log open a transaction; ``translate_errors()`` turns every
database failure into ``TemporaryFailure`` so SMTP answers 4xx, never 5xx.

SQLite transactions are started by us, not by the ``sqlite3`` module (the
"BEGIN in lieu of SQLite's transaction control" recipe from the SQLAlchemy
docs): write transactions use ``BEGIN IMMEDIATE``, which takes the database's
single write lock up front, so two writers (threads or processes) queue on
``busy_timeout`` instead of both reading and then one failing on upgrade.

Every SQLite connection runs with ``secure_delete=ON``: what a delete or an update
frees (a delivered message's body, purged rows) is overwritten with zeros, in its
page and in freed overflow pages, instead of staying readable in the file until
reused. The WAL still holds the old frames until it is reset and overwritten;
``checkpoint(..., truncate=True)`` empties it (see ``Queue.checkpoint``).
"""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event, exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from securemail.errors import ConfigError, TemporaryFailure

_WRITE = "securemail_write"  # connection execution option read by the SQLite begin hook
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DB_ERRORS = (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
              sqlite3.Error, OSError)


def _db_errors() -> tuple[type[BaseException], ...]:
    """The errors a database can raise here; psycopg's only once it is loaded (a PostgreSQL URL):
    a SQLite gateway does not import it (about 20 MiB in each of its processes)."""
    pg = sys.modules.get("psycopg")
    return _DB_ERRORS + ((pg.Error,) if pg is not None else ())


def make_engine(url: str, *, busy_timeout: float = 5.0,
                search_path: str | None = None, wal_autocheckpoint: bool = True) -> Engine:
    """An engine for ``url``: SQLite (WAL, synchronous=FULL) or PostgreSQL (pooled).

    ``busy_timeout`` is how long a SQLite writer waits for the write lock.
    ``search_path`` puts the PostgreSQL tables in that schema (tests, shared DBs).
    ``wal_autocheckpoint=False``: this engine's commits never run a SQLite checkpoint (tens of
    milliseconds, paid by whichever commit crosses 1000 WAL pages); someone must then call
    ``checkpoint`` (the serve process's delivery workers do, every second).
    """
    u = sa.engine.make_url(url)
    with translate_errors():
        if u.get_backend_name() == "sqlite":
            return _sqlite_engine(u, busy_timeout, wal_autocheckpoint)
        connect_args = {}
        if search_path is not None:
            if not _IDENT.match(search_path):
                raise ConfigError(f"invalid schema name {search_path!r}")
            connect_args["options"] = f"-c search_path={search_path}"
        return sa.create_engine(u, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(u: sa.engine.URL, busy_timeout: float, autocheckpoint: bool) -> Engine:
    path = u.database or ""
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(u, connect_args={"timeout": busy_timeout})
    busy_ms = max(0, int(busy_timeout * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # removed bodies are zeroed, not left in free space
            if not autocheckpoint:
                cur.execute("PRAGMA wal_autocheckpoint=0")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn database and filesystem failures into ``TemporaryFailure`` (public text is generic)."""
    try:
        yield
    except _db_errors() as err:
        raise TemporaryFailure(detail=describe(err)) from err


def describe(err: BaseException) -> str:
    """A one-line log detail for a database error: driver class and message, no SQL text."""
    orig = getattr(err, "orig", None) or err
    lines = str(orig).strip().splitlines()
    return f"database error: {type(orig).__name__}: {lines[0] if lines else ''}"


@contextmanager
def transaction(engine: Engine, *, write: bool = True,
                snapshot: bool = False) -> Iterator[Connection]:
    """One transaction, committed on exit; errors become ``TemporaryFailure``.

    ``write`` takes SQLite's write lock at BEGIN (``BEGIN IMMEDIATE``).
    ``snapshot`` gives PostgreSQL a REPEATABLE READ snapshot for multi-statement
    reads (a SQLite read transaction is already a snapshot in WAL mode).
    """
    with translate_errors(), engine.connect() as conn:
        conn.execution_options(**{_WRITE: write})
        if snapshot and conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


TRUNCATE_WAIT_MS = 50  # how long a truncating checkpoint may wait for readers and the writer


def checkpoint(engine: Engine, *, truncate: bool = False) -> bool:
    """A PASSIVE SQLite checkpoint (copies committed WAL pages into the database without
    blocking writers or readers); nothing on PostgreSQL.

    ``truncate``: when the passive run folded the whole WAL, truncate it to zero bytes too
    (its old frames may hold removed content). That needs the write lock and no reader on
    the WAL: it waits at most ``TRUNCATE_WAIT_MS``, else it is left for the next call.
    Returns True when the WAL was truncated (always on PostgreSQL, which has none here).
    """
    if engine.dialect.name != "sqlite":
        return True
    with translate_errors():
        raw = engine.raw_connection()
        try:
            db = raw.driver_connection
            busy, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not truncate or busy or log != done:
                return False
            wait = db.execute("PRAGMA busy_timeout").fetchone()[0]
            db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            try:
                return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            finally:
                db.execute(f"PRAGMA busy_timeout={wait}")
        finally:
            raw.close()
