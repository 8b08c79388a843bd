"""Composition root: settings → objects. Nothing else builds engines or stores."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa

from .config import CoreConfig, GatewayConfig, read_toml
from .audit import AuditLog
from .db import make_engine
from .federation import ManifestSource
from .home import Home
from .keys.store import KeyStore
from .schema import create_schema

if TYPE_CHECKING:
    from .keys.locate import Locator  # here: its HTTPS client is for the commands that look keys up


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
    create_schema(engine, clock)  # every table, once: key changes are audited in every home
    keys = KeyStore(engine, clock, audit=AuditLog(engine, clock))
    _private(home.database_file)
    return Core(home, config, engine, keys)


def _private(path) -> None:
    """The database holds secret keys: owner-only, with its WAL files."""
    for p in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(p):
            os.chmod(p, 0o600)


def manifest_path(home: Home) -> Path:
    """Where the home's installed federation manifest is: the gateway's ``[federation] manifest``,
    else ``federation.json`` in a person's home."""
    data = read_toml(home.config_file)
    if "gateway" in data:
        return GatewayConfig.from_dict(data, home.path).federation_manifest
    return home.path / "federation.json"


def open_locator(core: Core, *, timeout: float = 10.0) -> "Locator | None":
    """The key locator of a home with an installed federation manifest; None without one.
    ``timeout``: seconds for one directory request (``read`` asks with a short one)."""
    from .keys.locate import Locator  # here: its HTTPS client is for the commands that look keys up
    path = manifest_path(core.home)
    if not path.exists():
        return None
    return Locator(core.keys, ManifestSource(path), refresh_seconds=core.config.directory_refresh,
                   timeout=timeout)
