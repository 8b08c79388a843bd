"""Shared fixtures: the interop corpus from ../shared/corpus and fresh securemail homes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from securemail.db import make_engine
from securemail.schema import create_schema
from tests.support import PG_URL, REPO, fresh_schemas, require_pg, run_cli  # noqa: F401 - tests import them from here

pytest_plugins = ("tests.differential",)  # every body that crosses to a member is checked (issue 10)

CORPUS = REPO.parent / "shared" / "corpus"


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


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# --- databases: a real SQLite file, or a fresh PostgreSQL schema (tests/support/pg.py) ---------
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
    with fresh_schemas("q", prefix="smtest") as schemas:
        t = Target(PG_URL, schemas["q"])
        try:
            yield t
        finally:
            for engine in t.engines:
                engine.dispose()


@pytest.fixture
def engine(target):
    engine = target.engine()
    create_schema(engine)
    return engine
