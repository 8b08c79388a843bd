"""A real HTTPS server (aiohttp, a self-signed certificate) serving bytes the test sets, e.g. the
federation authority's manifest at ``[federation] url``.

``StaticHTTPS(dir)`` makes its certificate in ``dir`` (``pin``: its SubjectPublicKeyInfo SHA-256) and,
as a context manager, serves ``files[path]`` on a free loopback port from a background thread; any
other path is 404. ``hits`` counts the requests per path.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import Counter
from pathlib import Path

from .ports import free_port


class StaticHTTPS:
    def __init__(self, directory: Path, hostname: str = "federation.test") -> None:
        from securemail.admin.setup import self_signed_cert
        from securemail.crypto.tlspin import spki_sha256
        self.cert, self.key = directory / "https-cert.pem", directory / "https-key.pem"
        self_signed_cert(hostname, self.cert, self.key)
        self.pin = spki_sha256(self.cert.read_bytes())
        self.port = free_port()
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = None

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def _start(self) -> None:
        from aiohttp import web

        async def serve(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            body = self.files.get(request.path)
            if body is None:
                return web.Response(status=404)
            return web.Response(body=body, content_type="application/json")
        app = web.Application()
        app.router.add_get("/{tail:.*}", serve)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.cert, self.key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()

    def __enter__(self) -> "StaticHTTPS":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
