"""A home's objects for the commands: keys, audit log, queue and key directory on the home's database;
the schema step of every root."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from ..audit import AuditLog
from ..config import CoreConfig, GatewayConfig, read_toml
from ..db import make_engine, transaction
from ..errors import ConfigError
from ..manifest_source import ManifestSource
from ..home import Home, resolve
from ..keys.locate import Locator
from ..keys.store import KeyStore
from ..queue import Queue
from ..migrations import SchemaState, state as migration_state
from ..schema import create_schema

SCHEMA_WAIT = 600.0  # seconds a migrator waits for another's SQLite write lock (PostgreSQL: no limit)


@dataclass
class Core:
    """A home's objects for the commands: keys and audit log on the home's database, and the
    gateway's queue and key directory on the same one (``[database] url``)."""
    home: Home
    config: CoreConfig
    engine: sa.Engine
    keys: KeyStore
    audit: AuditLog

    def queue(self) -> Queue:
        return Queue(self.engine, self.keys.clock, audit_log=self.audit)

    def directory(self):
        """The key directory of this gateway home (its served domains from the config)."""
        from ..keys.directory import Directory
        config = GatewayConfig.load(self.home)
        return Directory(self.engine, self.keys, config.domains, audit=self.audit)

    def close(self) -> None:
        self.engine.dispose()


def open_home(home_dir=None, clock: Callable[[], float] = time.time, *,
              database_url: str | None = None) -> Core:
    """The person-facing objects of a home; ``database_url`` overrides the config (gateway init)."""
    home = Home.open(home_dir)
    config = CoreConfig.load(home)
    if database_url:
        config = CoreConfig(database_url=database_url)
    if config.database_url == home.default_database_url and not home.database_file.exists():
        os.close(os.open(home.database_file, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = make_engine(config.database_url)
    prepare_schema(engine, home, clock, migrate=config.auto_migrate)  # every table, once
    audit = AuditLog(engine, clock)
    keys = KeyStore(engine, clock, audit=audit)
    _private(home.database_file)
    return Core(home, config, engine, keys, audit)


def prepare_schema(engine: sa.Engine, home: Home, clock=time.time, *, migrate: bool) -> SchemaState:
    """The schema step of a root (``schema.create_schema``): an older schema is upgraded when
    ``migrate`` (on an engine of its own, which waits for another migrator), else refused with
    the command that upgrades it."""
    fix = f"securemail --home {home.path} gateway migrate"
    if not migrate:
        return create_schema(engine, clock, fix=fix)
    patient = make_engine(engine.url.render_as_string(hide_password=False), busy_timeout=SCHEMA_WAIT)
    try:
        return create_schema(patient, clock, migrate=True, fix=fix)
    finally:
        patient.dispose()


def migrate_database(home_dir=None) -> tuple[SchemaState, SchemaState]:
    """``securemail gateway migrate``: the home's database upgraded to this version's schema,
    under the migration lock; its state before and after."""
    home = Home(resolve(home_dir))
    if not home.path.is_dir():
        raise ConfigError(f"no home at {home.path}: nothing to migrate")
    url = CoreConfig.load(home).database_url
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).exists():
        raise ConfigError(f"no database at {u.database}: nothing to migrate (check database.url)")
    engine = make_engine(url)
    try:
        before = prepare_schema(engine, home, migrate=True)
        with transaction(engine, write=False) as conn:
            return before, migration_state(conn)
    finally:
        engine.dispose()


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


def open_locator(core: Core, *, timeout: float = 10.0) -> Locator | None:
    """The key locator of a home with an installed federation manifest; None without one.
    ``timeout``: seconds for one directory request (``read`` asks with a short one)."""
    path = manifest_path(core.home)
    if not path.exists():
        return None
    return Locator(core.keys, ManifestSource(path), refresh_seconds=core.config.directory_refresh,
                   timeout=timeout)
