"""The local IMAP listener: pymap's IMAP server with the bridge's login, session and folders.

pymap parses and answers IMAP (IMAP4rev1, IDLE, MOVE, UIDPLUS, STARTTLS, LITERAL+); the
bridge supplies one user. LOGIN and AUTHENTICATE go through ``AuthGuard`` (authlimit.py): the
failure budget per source address and per account, the same constant-time comparison of the
one local password whatever the name given. From loopback a client may log in before STARTTLS
(pymap's rule: no one can read the loopback interface without root); from anywhere else
(``--allow-remote``) only after it.

SEARCH is pymap's, on what the client sees: headers are the decrypted message's (protected
Subject and From included). A search that needs bodies (BODY, TEXT) looks through the
messages already decrypted in memory and at most ``BODY_SEARCH_DECRYPTS`` others, newest
first; older ones are not matched. That bounds its cost (each is an upstream fetch and a
decryption), and is documented in docs/bridge.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from argparse import Namespace

from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.version import ProxyProtocolVersion
from pymap.backend.session import BaseSession
from pymap.config import BackendCapability, IMAPConfig
from pymap.context import connection_exit, socket_info
from pymap.exceptions import AuthorizationFailure, InvalidAuth
from pymap.flags import FlagOp, PermanentFlags, SessionFlags
from pymap.imap import IMAPConnection, IMAPServer
from pymap.imap.state import ConnectionState
from pymap.parsing.specials import FetchRequirement
from pymap.parsing.specials.flag import Seen
from pymap.search import SearchCriteriaSet, SearchParams
from pysasl.identity import ClearIdentity

from ..authlimit import AuthGuard
from . import pymap_checks, pymap_fetch
from .folders import Folders
from .mailbox import selected_messages
from .selected import Selected
from .upstream import UpstreamError

log = logging.getLogger(__name__)
BODY_SEARCH_DECRYPTS = 200       # messages a body search may decrypt beyond those in memory
MAX_APPEND = 50 << 20            # bytes of one APPEND


class BridgeIMAPConfig(IMAPConfig):
    def __init__(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        super().__init__(Namespace(passlib_cfg=None, proxy_protocol=None), host=host, port=port,
                         ssl_context=tls, tls_enabled=True, reject_dnsbl=False, invalid_user_sleep=0,
                         max_append_len=MAX_APPEND, proxy_protocol=ProxyProtocolVersion.get(None))

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=True, object_id=False, multi_append=True)

    @property
    def greeting(self) -> bytes:
        return b"securemail bridge ready"


class Session(BaseSession):
    def __init__(self, owner: str, config: BridgeIMAPConfig, folders: Folders) -> None:
        super().__init__(owner)
        self._config, self._folders = config, folders

    @property
    def config(self) -> BridgeIMAPConfig:
        return self._config

    @property
    def mailbox_set(self) -> Folders:
        return self._folders

    async def check_mailbox(self, selected, *, wait_on=None, housekeeping: bool = False):
        if wait_on is None:  # NOOP, CHECK: what changed upstream since
            await (await self._get_selected(selected)).refresh()
        return await super().check_mailbox(selected, wait_on=wait_on, housekeeping=housekeeping)

    async def select_mailbox(self, name: str, readonly: bool = False):
        """pymap's, with the session's view a ``Selected`` (selected.py: an end of command that
        costs nothing when nothing changed)."""
        mbx = await self._get_mailbox(name)
        selected = Selected(mbx.mailbox_id, readonly or mbx.readonly, PermanentFlags(mbx.permanent_flags),
                            SessionFlags(mbx.session_flags), selected_set=mbx.selected_set, lookup=name)
        if not selected.readonly:
            await mbx.claim_recent(selected)
        return await mbx.snapshot(), await mbx.update_selected(selected)

    async def fetch_messages(self, selected, sequence_set, set_seen: bool):
        """pymap's, with the messages named found by ``selected_messages`` (mailbox.py): pymap's
        ``get_all`` walks every message of the folder for each FETCH."""
        mbx = await self._get_selected(selected)
        found = []
        for seq, cached_msg in selected_messages(selected.messages, sequence_set):
            if set_seen:
                msg = await mbx.update(cached_msg.uid, cached_msg, frozenset({Seen}), FlagOp.ADD)
            else:
                msg = await mbx.get(cached_msg.uid, cached_msg)
            if msg is not None:
                found.append((seq, msg))
        return found, await mbx.update_selected(selected)

    async def search_mailbox(self, selected, keys):
        mbx = await self._get_selected(selected)
        req = FetchRequirement.reduce(key.requirement for key in keys)
        if not req.has_all(FetchRequirement.BODY):
            return await super().search_mailbox(selected, keys)
        search = SearchCriteriaSet(keys, SearchParams(selected, disabled=self.config.disable_search_keys))
        found, budget = [], BODY_SEARCH_DECRYPTS
        candidates = [pair async for pair in mbx.find(search.sequence_set, selected)]
        for seq, msg in reversed(candidates):  # newest first: the budget goes to recent mail
            if msg.expunged:
                continue
            if mbx.parts.cache.get((mbx.name, mbx.uid_validity, msg.uid)) is None:
                if budget == 0:
                    continue
                budget -= 1
            if search.matches(seq, msg, await msg.load_content(req)):
                found.append((seq, msg))
        return sorted(found, key=lambda pair: pair[0]), await mbx.update_selected(selected)


class Identity:
    def __init__(self, name: str, config: BridgeIMAPConfig, folders: Folders) -> None:
        self.name, self.roles = name, frozenset()
        self._config, self._folders = config, folders

    @contextlib.asynccontextmanager
    async def new_session(self):
        yield Session(self.name, self._config, self._folders)

    async def new_token(self, *, expiration=None):
        return None

    async def get(self):
        raise InvalidAuth()

    async def set(self, metadata):
        raise InvalidAuth()

    async def delete(self):
        raise InvalidAuth()


class Login:
    """The one local user; every attempt through the failure budget (``AuthGuard``)."""

    def __init__(self, username: str, password: str, guard_factory, config: BridgeIMAPConfig,
                 folders: Folders) -> None:
        identity = ClearIdentity(username, password)
        # AuthGuard hands its check the (user, secret) it was given: here the SASL credentials,
        # which compare themselves with the one identity in constant time (pysasl)
        self.guard: AuthGuard = guard_factory(lambda user, creds: creds.verify(identity))
        self.username, self.config, self.folders = username, config, folders
        self.tokens = None

    async def authenticate(self, credentials) -> Identity:
        peer = socket_info.get().peername_ip
        outcome = await self.guard.verify(str(peer) if peer else "local", credentials.authcid, credentials)
        if outcome == "locked":
            raise InvalidAuth("Too many failed logins; try again later.")
        if outcome != "ok":
            raise InvalidAuth()
        return Identity(self.username, self.config, self.folders)

    async def authorize(self, authenticated: Identity, authzid: str) -> Identity:
        if authzid and authzid != authenticated.name:
            raise AuthorizationFailure()
        return authenticated


class _Coalesced:
    """A connection's StreamWriter whose small writes go out together at ``drain``, and whose big
    ones go out in pieces of ``PIECE``, each drained before the next.

    pymap writes each piece of each response on its own (a FETCH of 1,000 messages' flags is
    thousands of writes, each a TLS record); joined until the response is drained, they are a
    few. A piece of 64 KiB or more (a message body) is not copied; written at once, a 35 MB body
    would wait whole, encrypted, in the transport's buffer for a slow client.
    """

    LARGE = 64 << 10
    PIECE = 256 << 10

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer, self._pending, self._size = writer, [], 0
        self._queue: list = []   # in order: joined small writes (bytes), big ones (as given)

    def write(self, data) -> None:
        if len(data) >= self.LARGE:
            self._join()
            self._queue.append(data)
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= self.LARGE:
            self._join()

    def _join(self) -> None:
        if self._pending:
            self._queue.append(b"".join(self._pending))
            self._pending, self._size = [], 0

    async def drain(self) -> None:
        self._join()
        queue, self._queue = self._queue, []
        for data in queue:
            if len(data) <= self.PIECE:
                self._writer.write(data)
                continue
            view = memoryview(data)
            for at in range(0, len(view), self.PIECE):
                self._writer.write(view[at:at + self.PIECE])
                await self._writer.drain()
        await self._writer.drain()

    async def start_tls(self, context, **kw) -> None:
        await self.drain()
        await self._writer.start_tls(context, **kw)

    def close(self) -> None:
        self._join()
        for data in self._queue:
            self._writer.write(data)
        self._queue = []
        self._writer.close()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


class _Connection(IMAPConnection):
    """pymap's connection, less its protocol log. pymap logs every command (the local password in
    LOGIN, a message APPENDed) and every response (each message shown, decrypted) at DEBUG, and
    serialises each response a second time for that log whatever the level (for a 35 MB message,
    35 MB more, and a tenth of the bridge's CPU in a sync). Nothing here is logged."""

    @classmethod
    def _print(cls, log_format: str, output) -> None:
        return None

    async def write_response(self, resp) -> None:
        try:
            await resp.async_write(self.writer)
            await self.writer.drain()
        except ConnectionError:
            pass


class _Server(IMAPServer):
    """pymap's server, its connections built as ``_Connection`` writing through ``_Coalesced``
    (as IMAPServer.__call__ builds its own)."""

    async def __call__(self, reader, writer, sock_info) -> None:
        conn = _Connection(self.commands, self._config, reader, _Coalesced(writer), sock_info)
        state = ConnectionState(self._login, self._config)
        async with contextlib.AsyncExitStack() as stack:
            connection_exit.set(stack)
            stack.enter_context(contextlib.closing(conn))
            try:
                await conn.run(state)
            except UpstreamError as e:   # in the middle of an answer (a message loaded as it is
                # written): no NO can follow its first bytes, so the connection ends; the client
                # connects again and asks again
                log.warning("a client's connection ended: %s", e.message)


async def start_imap(login: Login, config: BridgeIMAPConfig) -> asyncio.AbstractServer:
    """Listen on ``config.host:config.port``; pymap serves each connection (its protocol checks
    made fast first, pymap_checks.py; its FETCH values written in pieces, pymap_fetch.py)."""
    pymap_checks.install()
    pymap_fetch.install()
    callback = ProxyProtocolReader(config.proxy_protocol).get_callback(_Server(login, config))
    return await asyncio.start_server(callback, host=config.host, port=config.port)
