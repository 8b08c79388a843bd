"""PostgreSQL for tests, proof and bench: is it there, and fresh schemas dropped after use.

Nothing here imports pytest at import time (the benchmark runs without it);
only ``require_pg`` loads it, to skip or fail a test.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

PG_URL = os.environ.get("SECUREMAIL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_available(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    import sqlalchemy as sa
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except sa.exc.SQLAlchemyError as err:
        return f"PostgreSQL unreachable at {url}: {type(getattr(err, 'orig', None) or err).__name__}"
    finally:
        engine.dispose()


def require_pg() -> None:
    """Skip when PostgreSQL is unreachable, visibly; fail instead when $CI is set."""
    import pytest
    why = pg_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@contextmanager
def fresh_schemas(*names: str, prefix: str = "smgw", url: str = PG_URL):
    """New schemas, yielded as {name: schema}; dropped after, even if the server restarted meanwhile."""
    import sqlalchemy as sa
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    schemas = {n: f"{prefix}_{n}_{tag}" for n in names}
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)  # no connection outlives a restart
    try:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield schemas
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
            for schema in schemas.values():
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def schema_url(schema: str, url: str = PG_URL) -> str:
    """``url`` with its search_path set to ``schema`` (what ``--database-url`` takes)."""
    import sqlalchemy as sa
    return (sa.engine.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False))


@contextmanager
def pg_schemas(*names: str, prefix: str = "smgw", url: str = PG_URL):
    """Fresh schemas, yielded as {name: database URL with that search_path}; dropped after.

    For a test: skipped (failed under CI) when PostgreSQL is unreachable."""
    require_pg()
    with fresh_schemas(*names, prefix=prefix, url=url) as schemas:
        yield {n: schema_url(schema, url) for n, schema in schemas.items()}


@contextmanager
def pg_schema(tag: str, prefix: str = "smgw", url: str = PG_URL):
    """One fresh schema, yielded as a database URL; dropped after (no pytest: the benchmark's too)."""
    with fresh_schemas(tag, prefix=prefix, url=url) as schemas:
        yield schema_url(schemas[tag], url)
