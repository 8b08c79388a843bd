"""Logs and metrics of a serve tree's processes: each process's logging (``setup_logging``), the
metric files they share (``share_metrics``), their Metrics (``open_metrics``), and the metrics
listener of a serve process (``monitor``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import GatewayConfig
from ..errors import SecureMailError
from ..home import Home
from ..manifest_source import ManifestSource
from ..transform.stage import CryptoStage

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..procs.gateway import Gateway
    from ..procs.monitor import MonitorServer

METRICS_DIR = "metrics"   # in the home: each process's metric files (prometheus-client multiprocess)


def setup_logging(home: Path, role: str, *, level: int | None = None) -> None:
    """This process's log lines as the home's ``[log]`` says (logs.py), tagged with ``role``; the
    defaults when the config cannot be read. ``level`` overrides ``log.level``."""
    from ..logs import LogSettings, configure
    try:
        settings = GatewayConfig.load(Home(Path(home))).log
    except SecureMailError:
        settings = LogSettings()
    configure(settings, role, home=Path(home), level=level)


def share_metrics(home: Home, *, fresh: bool) -> bool:
    """For ``securemail serve``, before anything is counted: when ``[listeners.metrics]`` is on, this
    process and every process it starts count in ``home/metrics`` (metrics.py), which the top serve
    process (``fresh``) empties first. Whether they do."""
    if GatewayConfig.load(home).listener("metrics") is None:
        return False
    from ..metrics import share_between_processes
    share_between_processes(home.path / METRICS_DIR, fresh=fresh)
    return True


def open_metrics(role: str, known_domains=frozenset, *, shared_only: bool = False) -> Metrics | None:
    """This process's metrics (metrics.py). ``shared_only`` (a child of serve): None unless they are
    counted with the other processes' (``share_metrics`` ran in the serve process), since nobody
    would read them."""
    if shared_only and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    from ..metrics import Metrics
    return Metrics(role, known_domains)


def known_domains(config: GatewayConfig, manifest: ManifestSource):
    """Ours and the members': the domain labels of delivery metrics (any other is "other")."""
    def known() -> set[str]:
        m = manifest()
        return {*config.domains, *(m.members if m else ())}
    return known


def monitor(config: GatewayConfig, gateway: Gateway, metrics: Metrics, manifest: ManifestSource,
            stage: CryptoStage, clock, reuse_port: bool) -> MonitorServer:
    """The metrics listener of a serve process: its counters, the state read at each scrape, readiness."""
    from ..procs.health import Readiness
    from ..procs.monitor import MonitorServer
    from ..procs.scrape import StateGauges
    li = config.listener("metrics")
    keys = stage.transformer.domain_keys
    ready = Readiness(engine=gateway.engine, manifest=manifest, domains=config.domains, domain_keys=keys,
                      processes=gateway.process_probes, clock=clock)
    state = StateGauges(engine=gateway.engine, manifest=manifest, certificate=config.tls_cert,
                        domain_keys=keys, clock=clock)
    return MonitorServer(li.host, li.port, metrics, ready, state, reuse_port=reuse_port)
