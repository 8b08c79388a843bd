"""gateway check: the database answers, and has every table and column this version uses.

The check opens its own engine with a short connect timeout and never creates anything: no
SQLite file where there was none, no missing table (``schema.create_schema`` is the roots' job;
a check that repaired what it checks would hide a gateway pointed at the wrong database).
"""

from __future__ import annotations

import math
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .. import migrations
from ..db import make_engine, transaction
from ..errors import ConfigError, TemporaryFailure
from ..schema import METADATA, gaps as schema_gaps
from .result import Check, command, passed, problem


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ``database.url`` (it holds the domains' secret keys); None otherwise."""
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    path = u.database or ""
    if u.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).expanduser()


def open_database(url: str, home: Path, timeout: float, engine_for=make_engine) -> tuple[Check, Engine | None]:
    """The "database" check, and an engine on it when it answers (the caller disposes of it)."""
    fix = "start the database server, or correct database.url (a SQLAlchemy URL)"
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return problem("database", "database.url is not a SQLAlchemy URL", fix), None
    shown = u.render_as_string(hide_password=True)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return problem("database", f"{shown}: no such file", "correct database.url: the gateway's database is "
                       f"the one {command(home, 'gateway init')} made (it holds the domains' keys)"), None
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        u = u.update_query_dict({"connect_timeout": str(max(1, math.ceil(timeout)))})
    try:
        engine = engine_for(u.render_as_string(hide_password=False))
    except (ConfigError, TemporaryFailure, sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        return problem("database", f"{shown}: {getattr(e, 'detail', None) or e}", fix), None
    try:
        with transaction(engine, write=False) as conn:
            conn.execute(sa.text("SELECT 1"))
    except TemporaryFailure as e:
        engine.dispose()
        return problem("database", f"{shown} does not answer: {e.detail}", fix), None
    return passed("database", f"{shown} answers"), engine


def schema_check(engine: Engine, home: Path) -> Check:
    """"database schema": at this version's revision, with every table and column of
    ``schema.METADATA``."""
    try:
        with transaction(engine, write=False) as conn:
            found = migrations.state(conn)
            tables, columns = schema_gaps(sa.inspect(conn))
    except TemporaryFailure as e:
        return problem("database schema", f"cannot be read: {e.detail}", "see the database check")
    if not found.known:
        return problem("database schema", f"at {found.describe()}: made by a newer securemail",
                       "run the securemail version that made it, or restore a backup made by this one")
    if not found.empty and not found.up_to_date:
        return problem("database schema", f"at {found.describe()}, this version needs revision {found.head}",
                       f"stop the gateway, back it up (`{command(home, 'gateway backup DIR')}`), then "
                       f"`{command(home, 'gateway migrate')}`")
    if columns:
        return problem("database schema", f"columns missing: {', '.join(columns)}"
                       + (f"; tables missing: {', '.join(tables)}" if tables else ""),
                       "this database was made by another securemail version, and columns are never added "
                       "to a table that exists: add them (ALTER TABLE) or use a database made by this version")
    if tables:
        return problem("database schema", f"tables missing: {', '.join(tables)}",
                       "check that database.url is this gateway's database; if it is, "
                       f"`{command(home, 'serve')}` creates the missing tables as it starts (so does "
                       f"`{command(home, 'audit verify')}`)")
    count = sum(len(m.sorted_tables) for m in METADATA)
    return passed("database schema", f"revision {found.current}: the {count} tables of this version, every column")
