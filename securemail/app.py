"""Composition root: settings → objects. Nothing else builds engines or stores."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from .config import CoreConfig
from .audit import AuditLog
from .db import create_schema, make_engine
from .home import Home
from .keys.store import KeyStore


@dataclass
class Core:
    home: Home
    config: CoreConfig
    engine: sa.Engine
    keys: KeyStore

    def close(self) -> None:
        self.engine.dispose()


def open_core(home_dir=None, clock: Callable[[], float] = time.time, *,
              database_url: str | None = None) -> Core:
    """The person-facing objects of a home; ``database_url`` overrides the config (gateway init)."""
    home = Home.open(home_dir)
    config = CoreConfig.load(home)
    if database_url:
        config = CoreConfig(database_url=database_url)
    if config.database_url == home.default_database_url and not home.database_file.exists():
        os.close(os.open(home.database_file, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = make_engine(config.database_url)
    create_schema(engine)  # queue and audit tables: key changes are audited in every home
    keys = KeyStore(engine, clock, audit=AuditLog(engine, clock))
    _private(home.database_file)
    return Core(home, config, engine, keys)


def _private(path) -> None:
    """The database holds secret keys: owner-only, with its WAL files."""
    for p in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(p):
            os.chmod(p, 0o600)
