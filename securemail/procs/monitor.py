"""The metrics listener ``[listeners.metrics]`` (aiohttp, plain HTTP on a loopback or management address).

- ``GET /metrics``: the Prometheus text format: every process's counters (metrics.py) and the
  state read at this scrape (procs/scrape.py);
- ``GET /healthz``: 200 ``{"alive": true}`` while the serve process's event loop answers;
- ``GET /readyz``: 200 when every readiness probe passes, else 503; both with the JSON body of
  ``health.answer`` (``ready``, ``reason``, ``checks``).

Thin, as keys/wkd_server.py: the work (database reads, mmap files) runs in a thread, so a slow
database delays a scrape, never the mail. With several serve processes the port is shared
(SO_REUSEPORT) and any of them answers the same.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..metrics import CONTENT_TYPE, Metrics
from .health import Probe, Readiness, answer

log = logging.getLogger(__name__)
PROBE_SECONDS = 5.0   # /readyz answers 503 when its probes take longer (a database that hangs)


class MonitorServer:
    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness, *collectors,
                 reuse_port: bool = False) -> None:
        self.host, self.port, self.reuse_port = host, port, reuse_port
        self.metrics, self.readiness, self.collectors = metrics, readiness, collectors
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.scrape)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None)  # a scrape every few seconds is no news
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_port=self.reuse_port or None).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def scrape(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.exposition, *self.collectors)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            probes = await asyncio.wait_for(asyncio.to_thread(self.readiness.probes), PROBE_SECONDS)
        except TimeoutError:
            probes = [Probe("database", False, f"no answer within {PROBE_SECONDS:.0f} s")]
        status, body = answer(probes)
        return web.json_response(body, status=status)
