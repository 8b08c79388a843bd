"""What one run of the gateway benchmark starts and waits on: its scenario, the server(s) and the sink,
and the deliveries at the sink. Shared by ``bench.gateway`` and ``bench.gateway_profile``.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.homes import make_federation
from bench.procs import Proc
from bench.sinks import read_arrivals
from tests.support import free_port, pg_schema, second_node

SENDER, RCPT = "alice@interieur.gouv.fr", "bob@justice.gouv.fr"
# Messages per run at 4 KiB / 64 KiB / 1 MiB, sized for ~4-5 min in all on 2 cores.
COUNTS = {"floor-smtp": (1000, 400, 60), "floor-queue": (1000, 400, 60),
          "gpg-filter": (400, 200, 40), "securemail": (600, 200, 30), "securemail-pg": (300, 100, 20)}


@dataclass
class Scenario:
    name: str               # the label in the table
    kind: str               # one of bench.gateway.KINDS
    size: int
    n: int
    c: int
    db: str = "sqlite"      # securemail: sqlite | pg
    nodes: int = 1          # securemail processes sharing the database
    rate: float | None = None
    warmup: int = 20
    warm_size: int | None = None    # warm-up message size (default: size)
    rss_growth: bool = False        # reset the peak RSS after warm-up, report the growth
    one_process: bool = False       # securemail: each serve node one OS process (cpu_workers = 0,
    #                                 delivery in the same process), for the 1-vs-2 processes target


def default_count(kind: str, size: int, scale: float) -> int:
    small, mid, big = COUNTS[kind]
    n = small if size <= 16 << 10 else mid if size <= 256 << 10 else big
    return max(5, int(n * scale))


def effective_cpu_workers(home: Path, several_processes: bool) -> int | None:
    """The crypto worker processes a serve process of ``home`` runs, as the gateway resolves "auto"."""
    try:
        from securemail.config import GatewayConfig
        from securemail.home import Home
        return GatewayConfig.load(Home(home)).crypto_workers(several_processes)
    except Exception:  # noqa: BLE001 - a gateway without the setting, or a config it refuses
        return None


# --- what a run starts ---------------------------------------------------------------
class Setup:
    """What a run started (stopped by the run's ExitStack): servers, sink, where the load goes."""

    def __init__(self) -> None:
        self.servers: list[Proc] = []
        self.sink: Proc | None = None
        self.sink_log: Path | None = None
        self.targets: list[tuple[str, int]] = []
        self.stats: list[Path] = []
        self.extra_pids: list[int] = []   # e.g. gpg-agent, counted in the CPU and memory of the run
        self.cpu_workers: int | None = None   # securemail: crypto worker processes per serve process


def start_sink(d: Path, port: int, tls: tuple[Path, Path] | None = None,
               wkd: int | None = None) -> tuple[Proc, Path]:
    arrivals = d / "arrivals.tsv"
    args = ["--listen", f"127.0.0.1:{port}", "--log", str(arrivals)]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    if wkd:
        args += ["--wkd-listen", f"127.0.0.1:{wkd}"]
    ports = [port] + ([wkd] if wkd else [])
    return Proc.module("bench.sinks", *args, log=d / "sink.log", ports=ports).start(), arrivals


def setup_securemail(sc: Scenario, d: Path, stack: ExitStack, tuning: dict) -> Setup:
    s = Setup()
    db = stack.enter_context(pg_schema(sc.name.replace("-", "_"), prefix="smbench")) if sc.db == "pg" else None
    if sc.one_process:
        tuning = {**tuning, "cpu_workers": "0"}
    fed = make_federation(d, sender_db=db, **tuning)
    s.sink, s.sink_log = start_sink(d, fed.receiver.relay, (fed.receiver.cert, fed.receiver.key),
                                    fed.receiver.wkd)
    stack.callback(s.sink.stop)
    homes = [fed.sender] + [second_node(fed.sender, d / f"node{i + 2}") for i in range(sc.nodes - 1)]
    s.cpu_workers = effective_cpu_workers(fed.sender.home, int(tuning.get("processes", "1")) > 1)
    for h in homes:
        p = Proc.module("cli.main", "--home", str(h.home), "serve", log=h.home / "serve.log",
                        ports=[h.relay, h.submission])
        s.servers.append(p.start())
        stack.callback(p.stop)
        s.targets.append(("127.0.0.1", h.relay))
    return s


def setup_baseline(sc: Scenario, d: Path, stack: ExitStack, recipient: tuple[str, bytes]) -> Setup:
    s = Setup()
    port = free_port()
    args = [sc.kind, "--listen", f"127.0.0.1:{port}", "--stats", str(d / "stats.json")]
    if sc.kind != "floor-smtp":
        args += ["--db", str(d / "queue.db")]
    if sc.kind == "gpg-filter":
        gnupg = d / "gnupg"
        gnupg.mkdir(mode=0o700)
        subprocess.run(["gpg", "--homedir", str(gnupg), "--batch", "--import"], input=recipient[1],
                       check=True, capture_output=True)
        stack.callback(subprocess.run, ["gpgconf", "--homedir", str(gnupg), "--kill", "all"],
                       capture_output=True)
        sink_port = free_port()
        s.sink, s.sink_log = start_sink(d, sink_port)
        stack.callback(s.sink.stop)
        args += ["--gnupghome", str(gnupg), "--recipient", recipient[0], "--relay", f"127.0.0.1:{sink_port}"]
    p = Proc.module("bench.baselines", *args, log=d / "server.log", ports=[port]).start()
    stack.callback(p.stop)
    s.servers.append(p)
    s.stats.append(d / "stats.json")
    s.targets.append(("127.0.0.1", port))
    return s


def arrivals_of(arrivals: Path, expected: set[str]) -> dict[str, list[float]]:
    """Every arrival time at the sink of each expected id (the Message-ID's left-hand side)."""
    seen: dict[str, list[float]] = {}
    for mid, t, _ in read_arrivals(arrivals):
        mid = mid.rpartition("@")[0] or mid
        if mid in expected:
            seen.setdefault(mid, []).append(t)
    return seen


def wait_delivered(arrivals: Path, expected: set[str], idle: float = 30.0) -> dict[str, list[float]]:
    """``arrivals_of`` once every expected id arrived, or after ``idle`` s without progress."""
    last, last_count = time.monotonic(), -1
    while True:
        seen = arrivals_of(arrivals, expected)
        if len(seen) >= len(expected):
            time.sleep(0.3)  # let a late duplicate show up
            return arrivals_of(arrivals, expected)
        if len(seen) != last_count:
            last, last_count = time.monotonic(), len(seen)
        elif time.monotonic() - last > idle:
            return seen
        time.sleep(0.1)
