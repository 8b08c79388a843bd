"""The upstream IMAP server (the ministry's Dovecot), through IMAPClient in threads.

IMAPClient (imaplib underneath, with a complete response parser) is blocking; each call here runs
in a thread of the bridge's own pool, on a connection taken from a small pool, so that the event
loop never waits on the network. A connection remembers the folder it has selected and selects
again only when another is asked for. A connection that fails (reset, timeout, TLS) is dropped
and the error raised as ``UpstreamError``; the next call opens a new one. TLS always: implicit on
port 993, else STARTTLS, the certificate checked against the system's CAs or ``cafile``.

``Watch`` is one more connection in IDLE on one folder (RFC 2177), for as long as a mail client
idles on it: each push from the server calls ``on_change`` on the event loop.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import imaplib
import logging
import re
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from pymap.exceptions import TemporaryFailure

from ..errors import SecureMailError

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_POLL = 0.5          # seconds between two looks at a Watch's stop flag
IDLE_RENEW = 25 * 60     # an IDLE is renewed before the 29 minutes of RFC 2177
_UIDCODE = re.compile(rb"\[(?:APPENDUID|COPYUID) (\d+) (?:[0-9:,]+ )?([0-9:,]+)\]")


class UpstreamError(SecureMailError, TemporaryFailure):
    """The upstream IMAP server failed or refused (its text is in the message, never a password);
    also pymap's TemporaryFailure, so that the client's command gets ``NO [INUSE]`` with it."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    implicit_tls: bool
    context: ssl.SSLContext
    username: str
    password: str
    timeout: float = 60.0

    def connect(self) -> IMAPClient:
        client = IMAPClient(self.host, self.port, ssl=self.implicit_tls, ssl_context=self.context,
                            timeout=self.timeout)
        # IMAPClient sets imaplib's debug level to 5 and sends its messages to a logger: imaplib
        # then formats every response with %r, a message's whole literal included, before the
        # logger drops it (two thirds of the bridge's CPU for a 1 MiB message; and what the
        # server sent would reach a log handler set to DEBUG). Level 0: nothing is formatted.
        client._imap.debug = 0
        try:
            if not self.implicit_tls:
                client.starttls(self.context)
            client.login(self.username, self.password)
            client.normalise_times = False  # INTERNALDATE with its time zone
            if client.has_capability("CONDSTORE") and client.has_capability("ENABLE"):
                client.enable("CONDSTORE")
        except BaseException:
            _close(client)
            raise
        return client


def _said(error: Exception) -> str:
    """What the server answered, as text (IMAPClient's errors carry the response's bytes)."""
    said = error.args[0] if error.args else ""
    if isinstance(said, str) and said[:2] in ("b'", 'b"'):   # LoginError holds str() of the bytes
        with contextlib.suppress(ValueError, SyntaxError):
            said = ast.literal_eval(said)
    return said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)


def _close(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: BLE001 - already gone
        pass


class _Conn:
    def __init__(self, client: IMAPClient) -> None:
        self.client, self.folder, self.info = client, None, {}

    def select(self, folder: str | None, refresh: bool = False) -> dict:
        if folder is not None and (refresh or folder != self.folder):
            self.folder = None
            self.info = self.client.select_folder(folder)
            self.folder = folder
        return self.info


class Upstream:
    """``await run(folder, fn)``: ``fn(client)`` on a connection with ``folder`` selected."""

    def __init__(self, endpoint: Endpoint, connections: int = 3) -> None:
        self.endpoint, self.size = endpoint, connections
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(connections)
        self._pool = ThreadPoolExecutor(connections + 4, thread_name_prefix="bridge-upstream")
        self._lock = threading.Lock()
        self.closed = False

    async def run(self, folder: str | None, fn: Callable[[IMAPClient], T] | None, *,
                  reselect: bool = False) -> T:
        async with self._slots:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._call, conn, folder, fn, reselect)

    async def select(self, folder: str) -> dict:
        """The folder's SELECT data, fresh (UIDVALIDITY, UIDNEXT, EXISTS, HIGHESTMODSEQ)."""
        return await self.run(folder, None, reselect=True)

    def _call(self, conn: _Conn | None, folder, fn, reselect: bool):
        try:
            if conn is None:
                conn = _Conn(self.endpoint.connect())
            info = conn.select(folder, refresh=reselect)
            out = fn(conn.client) if fn is not None else info
            if folder is None:
                conn.folder = None  # a call without a folder may have selected or closed one
        except (imaplib.IMAP4.abort, OSError, ssl.SSLError) as e:
            if conn is not None:
                _close(conn.client)
            raise UpstreamError(f"the upstream IMAP server failed: {e}") from None
        except IMAPClientError as e:   # a NO or BAD; at connect (conn None): the login refused
            if conn is not None:
                conn.folder = None
                self._give_back(conn)
            raise UpstreamError(f"the upstream IMAP server refused: {_said(e)}") from None
        self._give_back(conn)
        return out

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if self.closed:
                _close(conn.client)
            else:
                self._idle.append(conn)

    def forget_selections(self) -> None:
        """Every idle connection selects again at its next call (a folder was renamed or deleted)."""
        with self._lock:
            for conn in self._idle:
                conn.folder = None

    def watch(self, folder: str, on_change: Callable[[], None]) -> "Watch":
        return Watch(self, folder, on_change, asyncio.get_running_loop())

    async def close(self) -> None:
        self.closed = True
        with self._lock:
            conns, self._idle = self._idle, []
        for c in conns:
            await asyncio.get_running_loop().run_in_executor(self._pool, _close, c.client)
        self._pool.shutdown(wait=False, cancel_futures=True)


class Watch:
    """One connection in IDLE on ``folder`` in a thread of its own until ``stop()``."""

    def __init__(self, upstream: Upstream, folder: str, on_change, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream, self.folder, self.on_change, self.loop = upstream, folder, on_change, loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bridge-idle-{folder}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_change)
        except RuntimeError:  # the loop is closed: the bridge is stopping
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._idle_once()
            except Exception as e:  # noqa: BLE001 - reconnect after a pause; the clients keep working
                log.warning("upstream IDLE on %s failed (%s); again in 5 s", self.folder, e)
                self._stop.wait(5)

    def _idle_once(self) -> None:
        client = self.upstream.endpoint.connect()
        try:
            client.select_folder(self.folder, readonly=True)
            client.idle()
            self._notify()  # whatever changed before the IDLE began
            waited = 0.0
            while not self._stop.is_set() and waited < IDLE_RENEW:
                if client.idle_check(timeout=IDLE_POLL):
                    self._notify()
                waited += IDLE_POLL
            client.idle_done()
        finally:
            _close(client)


def new_uid(response: bytes | None) -> int | None:
    """The new UID that an APPENDUID or COPYUID response code (RFC 4315) gives, if one."""
    m = _UIDCODE.search(response or b"")
    if m is None or not m.group(2).isdigit():
        return None
    return int(m.group(2))
