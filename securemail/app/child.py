"""A child process of serve: a crypto worker's or the delivery child's own objects."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..audit import AuditLog
from ..config import GatewayConfig
from ..db import make_engine
from ..errors import ConfigError
from ..manifest_source import ManifestSource
from ..home import Home
from ..keys.store import KeyStore
from ..queue import Queue
from ..rotation import OwnKeys, Rotation
from ..transform.stage import CryptoStage

from .gateway import build_delivery, make_stage
from .observe import known_domains, open_metrics

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..delivery.pool import SessionPool
    from ..delivery.worker import DeliveryWorker


@dataclass
class ChildParts:
    """What a child process of serve builds from the home: a crypto worker uses the stage, the
    delivery child its workers and session pool."""
    config: GatewayConfig
    engine: sa.Engine
    keys: KeyStore
    queue: Queue
    manifest: ManifestSource
    stage: CryptoStage
    workers: list[DeliveryWorker] | None = None
    sessions: SessionPool | None = None
    metrics: Metrics | None = None

    def close(self) -> None:
        if self.metrics is not None:  # this process's live gauges go with it (its counts stay)
            self.metrics.process_ended(os.getpid())
        self.engine.dispose()


def open_child(home: Path, role: str, *, owner: str = "") -> ChildParts:
    """A child process's objects: the serve process's home, an engine of its own.
    ``role``: "crypto" (the stage) or "delivery" (the stage's transformer and the delivery workers)."""
    if role not in ("crypto", "delivery"):
        raise ConfigError(f"unknown child role {role!r}")
    config = GatewayConfig.load(Home(Path(home)))
    # the delivery workers run the SQLite checkpoints themselves (delivery/worker.py)
    engine = make_engine(config.database_url, wal_autocheckpoint=role != "delivery")
    audit = AuditLog(engine)
    keys = KeyStore(engine, time.time, audit=audit)
    manifest = ManifestSource(config.federation_manifest)
    queue = Queue(engine, time.time, audit_log=audit)
    rotation = Rotation(OwnKeys(config), manifest)
    metrics = open_metrics(role, known_domains(config, manifest), shared_only=True)
    parts = ChildParts(config, engine, keys, queue, manifest,
                       make_stage(config, keys, manifest, time.time, rotation, metrics), metrics=metrics)
    if role == "delivery":
        parts.workers, parts.sessions = build_delivery(
            config, queue=queue, keys=keys, manifest=manifest, transformer=parts.stage.transformer,
            clock=time.time, owner=owner, rotation=rotation, metrics=metrics)
    return parts
