"""The federation under test: A (sends) and B (receives), the sending side's database, its clock.

``world(tmp)`` sets up two gateways with the real CLI (``federation``) and
bruno, a person whose key B knows; ``database(backend)`` gives A's database
URL (its SQLite file, or a fresh PostgreSQL schema that survives a server
restart); ``Shifted`` runs gateways in this process with a clock set ahead.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import OFFICE, GatewayHome, Running, federation, person, require_pg
from tests.support import pg_schema as support_pg_schema

from .figures import FULL
from .sides import A, B, BRUNO


@dataclass
class World:
    """Two gateways of one federation (A sends, B receives) and bruno, a person known at B."""
    a: GatewayHome
    b: GatewayHome
    bruno: Path
    tmp: Path


def world(tmp: Path, *, a_url: str | None = None, **tune: str) -> World:
    """``federation`` + bruno's key at B; A's database at ``a_url`` (else SQLite); ``tune`` A's config."""
    _, homes = federation(tmp, database_urls={A: a_url} if a_url else None, trusted=OFFICE + "/32")
    a, b = homes[A], homes[B]
    bruno = person(tmp, BRUNO, b, "Bruno Petit")
    if tune:
        a.tune(**tune)
    return World(a, b, bruno, tmp)


def mailbox(g: GatewayHome, address: str) -> list[Path]:
    d = g.home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


BACKENDS = ["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not FULL, reason="on PostgreSQL in the full proof only (make proof); "
                                        "the fast subset runs this harness on SQLite")])]


@contextmanager
def pg_schema(tag: str = "a"):
    """A fresh PostgreSQL schema (``smproof_...``), as a database URL; dropped after, even if the
    server restarted meanwhile (tests/support/pg.py)."""
    require_pg()
    with support_pg_schema(tag, prefix="smproof") as url:
        yield url


@contextmanager
def database(backend: str):
    """The sending gateway's database URL: None for its SQLite file, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        yield None
        return
    with pg_schema() as url:
        yield url


class Shifted(Running):
    """``Running`` with a clock ``offset`` seconds ahead (mutable: ``shifted.offset = ...``)."""

    def __init__(self, *homes: GatewayHome, offset: float = 0.0, wrap=None) -> None:
        super().__init__(*homes, wrap=wrap)
        self.offset = offset

    def clock(self) -> float:
        return time.time() + self.offset

    def build_options(self) -> dict:
        return {"clock": self.clock}
