"""A private real Prometheus (Debian's ``prometheus``) for tests: its own config and storage in a
directory, on a free loopback port, scraping the targets it is given every second.

``Prometheus(dir, targets).start()``, ``.query(expr)`` (the instant vector from ``/api/v1/query``),
``.value(expr)``, ``.stop()``; ``require_prometheus()`` skips visibly when it is not installed
(fails under CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from .ports import free_port
from .waits import terminate, wait_for

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: securemail
    static_configs:
      - targets: [{targets}]
"""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def require_prometheus() -> None:
    """Skip when Prometheus is not installed, visibly; fail instead when $CI is set."""
    if prometheus_binary() is None:
        import pytest
        why = "prometheus is not installed (Debian: prometheus)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


class Prometheus:
    def __init__(self, directory: Path, targets: list[str]) -> None:
        self.directory = Path(directory)
        self.targets = targets
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "Prometheus":
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(CONFIG.format(targets=", ".join(f'"{t}"' for t in self.targets)))
        with open(self.directory / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for(self._ready, timeout, "prometheus to be ready")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def output(self) -> str:
        log = self.directory / "prometheus.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def query(self, expr: str) -> list[dict]:
        """The result of an instant query: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.load(r)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The one value of ``expr`` (None when it has no series)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> int | None:
        return terminate(self.proc, 30)
