"""Shared fixtures: the interop corpus from ../shared/corpus and fresh securemail homes."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from securemail.db import make_engine
from securemail.schema import create_schema

pytest_plugins = ("tests.differential",)  # every body that crosses to a member is checked (issue 10)

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
PG_URL = os.environ.get("SECUREMAIL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def corpus() -> dict:
    """The manifest, with absolute paths; skipped visibly when the corpus is absent (never under CI)."""
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        if os.environ.get("CI"):
            pytest.fail(f"corpus missing at {CORPUS}")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    data = json.loads(manifest.read_text())
    data["dir"] = CORPUS
    return data


def run_cli(home: Path, *args: str, input: bytes | None = None):
    """Run the securemail CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from cli.main import cli
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# --- databases: a real SQLite file, or a fresh PostgreSQL schema -----------------------------
def require_pg() -> None:
    """Skip when PostgreSQL is unreachable, visibly; fail instead when $CI is set."""
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as err:
        msg = f"PostgreSQL unreachable at {PG_URL}: {type(err.orig or err).__name__}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    finally:
        engine.dispose()


@dataclass
class Target:
    """Where a test's database lives; ``engine()`` opens (and later disposes) engines."""
    url: str
    search_path: str | None = None
    engines: list = field(default_factory=list)

    def engine(self, **kw) -> sa.Engine:
        engine = make_engine(self.url, search_path=self.search_path, **kw)
        self.engines.append(engine)
        return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request, tmp_path):
    if request.param == "sqlite":
        t = Target(f"sqlite:///{tmp_path}/spool/queue.db")
        yield t
        for engine in t.engines:
            engine.dispose()
        return
    require_pg()
    schema = f"smtest_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    t = Target(PG_URL, schema)
    try:
        yield t
    finally:
        for engine in t.engines:
            engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(target):
    engine = target.engine()
    create_schema(engine)
    return engine
