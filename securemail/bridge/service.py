"""``bridge serve``: the local IMAP listener and the SMTP submission side, until SIGTERM.

``app.open_bridge`` builds a ``Bridge`` from the home; ``run_until_signal`` starts it, waits
for SIGTERM or SIGINT and stops it in reverse order. An upstream that cannot be reached at start,
or refuses the login, is said in the log, not fatal: a laptop starts offline, a password is
changed upstream, and each client command tries again (its NO says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..errors import ConfigError
from ..procs.supervisor import stop_on_signals
from .folders import Folders
from .imap import BridgeIMAPConfig, Login, start_imap
from .upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, *, address: str, login: Login, imap_config: BridgeIMAPConfig, folders: Folders,
                 upstream: Upstream, crypto: ThreadPoolExecutor, secrets: contextlib.ExitStack,
                 submission=None, close=lambda: None, readers=None) -> None:
        self.address, self.login, self.imap_config, self.folders = address, login, imap_config, folders
        self.upstream, self.crypto, self.secrets, self.submission = upstream, crypto, secrets, submission
        self._close = close
        self.readers = readers   # readers.Readers, forked by open_bridge
        self.server: asyncio.AbstractServer | None = None

    @property
    def imap_port(self) -> int:
        return self.server.sockets[0].getsockname()[1] if self.server else self.imap_config.port

    async def start(self) -> None:
        if self.readers is not None:
            await self.readers.start()
        try:
            await self.folders.load()
        except UpstreamError as e:
            log.warning("the upstream IMAP server cannot be used now (%s); every client command "
                        "tries again", e.message)
        self.server = await _listening("IMAP", self.imap_config.host, self.imap_config.port,
                                       start_imap(self.login, self.imap_config))
        if self.submission is not None:
            await _listening("SMTP", self.submission.host, self.submission.port, self.submission.start())
        log.info("securemail bridge for %s: IMAP on %s:%s", self.address, self.imap_config.host, self.imap_port)

    async def stop(self) -> None:
        if self.submission is not None:
            await self.submission.stop()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        self.folders.stop()
        await self.upstream.close()
        if self.readers is not None:
            await self.readers.stop()
        self.login.guard.close()
        self.crypto.shutdown(wait=False, cancel_futures=True)
        self.secrets.close()  # the secret keys locked again
        self._close()

    async def run_until_signal(self, ready: Callable[[], None] = lambda: None) -> None:
        try:
            await self.start()
        except BaseException:   # a listener that cannot listen: what was started stops, keys locked
            await self.stop()
            raise
        ready()
        stop = stop_on_signals()
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await self.stop()


async def _listening(name: str, host: str, port: int, starting):
    """``await starting`` (a listener's start); a port another program holds is a clear error."""
    try:
        return await starting
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise ConfigError(f"the bridge's {name} listener {host}:{port} cannot listen: {why} "
                          "(another bridge or mail program, Proton Mail Bridge for one, may hold the port: "
                          f"stop it, or give the bridge another in bridge.toml, [local] {name.lower()})") from None
