"""Several serve processes for several cores: the parent starts them, forwards SIGTERM, reports their end.

Each child is a complete gateway (listeners with SO_REUSEPORT, delivery
workers) on the same database; leases make their claims exclusive. The
parent only supervises: a child that dies is started again (at most five
times a minute, then the parent stops them all and fails); it exits 0 when
every child stopped cleanly after SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def serve_processes(home: Path, n: int, child_env: str) -> int:
    env = {**os.environ, child_env: "1"}
    argv = [sys.executable, "-m", "cli.main", "--home", str(home), "serve", "--processes", str(n)]
    children = [subprocess.Popen(argv, env=env) for _ in range(n)]
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("securemail serve: %d processes %s", n, [c.pid for c in children])
    restarts: list[float] = []
    failed = False
    while any(c.poll() is None for c in children):
        for i, c in enumerate(children):
            if stopping or c.poll() is None:
                continue
            restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
            if len(restarts) > 5:
                log.error("serve processes keep dying; stopping")
                failed = True
                stop(signal.SIGTERM, None)
                break
            log.error("serve process %d ended (%s); starting it again", c.pid, c.returncode)
            children[i] = subprocess.Popen(argv, env=env)
        time.sleep(0.2)
    return 0 if not failed and all(c.returncode == 0 for c in children) else 1
