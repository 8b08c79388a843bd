"""SMTP server: aiosmtpd's protocol with hardened defaults, and a start/stop wrapper.

Differences from aiosmtpd 1.4.6, each tested in tests/integration/test_smtp_adapter.py:
451 (never "500 Error: (Type) text") on unexpected errors; 521 and hang-up on a bare
CR or LF anywhere (SMTP smuggling); DATA line, size, recipient, connection, idle and
DATA-time limits; NUL/control/8-bit bytes in commands refused; no version in the greeting;
a source-routed RCPT (``<@relay:user@domain>``) refused, where aiosmtpd would drop the route;
PIPELINING advertised (RFC 2920); DATA read in large runs, not line by line
(tests/integration/test_smtp_intake_stream.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import re
import socket
import ssl
from typing import Any, AsyncIterator, Callable

from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException

from securemail.config import Limits
from securemail.errors import ConfigError, SecureMailError
from securemail.smtp import replies
from securemail.smtp.fastaddr import fast_getaddr
from securemail.smtp.auth import AuthSession
from securemail.authlimit import AuthGuard
from securemail.smtp.dataread import END_OF_DATA as _END_OF_DATA, MAX_DATA_LINE, MAX_LINE_TEXT  # noqa: F401
from securemail.smtp.dataread import marker_begun as _marker_begun, text_length as _text_length
from securemail.smtp.dataread import too_long as _too_long, unstuffed as _unstuffed
from securemail.smtp.handler import Authenticator
from securemail.smtp.slots import Slots

log = logging.getLogger(__name__)

_EHLO_LAST = "250 HELP"  # aiosmtpd's last EHLO line (its HELP command answers otherwise)
_ADDRESS_COMMANDS = {b"MAIL": replies.BAD_SENDER_SYNTAX, b"RCPT": replies.BAD_RCPT_SYNTAX}
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_NOT_PRINTABLE_OR_TAB = re.compile(rb"[^\t\x20-\x7e]")
_SOURCE_ROUTE = re.compile(r"TO:\s*<\s*@", re.I)  # RFC 5321 4.1.2 A-d-l, obsolete
_MAIL_SOURCE_ROUTE = re.compile(r"FROM:\s*<\s*@", re.I)


class CommandRefused(SecureMailError):
    """A command line refused before aiosmtpd parses it, with one of the named replies."""


class _CommandReader:
    """Wraps a session's StreamReader: every command line is checked before aiosmtpd parses it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        object.__setattr__(self, "_inner", reader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:  # aiosmtpd sets _transport on STARTTLS
        setattr(self._inner, name, value)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await self._inner.readuntil(separator)
        if separator != b"\n":  # only command lines are checked (DATA uses the inner reader)
            return line
        text = line[:-2]  # always CRLF-terminated: a bare LF never gets this far
        verb = text.split(b" ", 1)[0].upper()
        if verb in _ADDRESS_COMMANDS and _NOT_PRINTABLE.search(text):
            raise CommandRefused(reply=_ADDRESS_COMMANDS[verb])
        if _NOT_PRINTABLE_OR_TAB.search(text):
            raise CommandRefused(reply=replies.BAD_CHARACTERS)
        return line


class _Session(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every AUTH."""
    login_data = property(lambda s: s._login_data, lambda s, v: setattr(s, "_login_data", v))


class GatewaySMTP(AuthSession, SMTP):
    """One SMTP session: aiosmtpd's state machine with securemail's limits and replies."""

    command_size_limit = 510  # 512 octets with CRLF, RFC 5321 4.5.3.1.4

    def __init__(self, handler: Any, *, sessions: SMTPServer, **kwargs: Any) -> None:
        limits = self.limits = sessions.limits
        # aiosmtpd keeps this in a class attribute shared by every session; make it ours.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        super().__init__(handler, data_size_limit=limits.message_size,
                         timeout=limits.command_timeout, enable_SMTPUTF8=False,
                         decode_data=False, auth_require_tls=True, **kwargs)
        self._sessions = sessions
        self._counted_ip: str | None = None
        self._hung_up = False  # refused at connect, or close_with() was called
        self._pending_cr = False
        self._mail_given = False  # the idle limit is idle_before_mail until the first MAIL

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self._original_transport is None:  # TCP, not the TLS upgrade
            peer = transport.get_extra_info("peername") or ("", 0)
            if not self._sessions.acquire(str(peer[0]), self):
                log.warning("%s refused: too many connections", peer[0])
                self._hung_up = True
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")  # type: ignore
                transport.close()
                return
            self._counted_ip = str(peer[0])
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted_ip is None:  # refused at connect: aiosmtpd never saw this connection
            return
        self._sessions.release(self._counted_ip, self)
        self._counted_ip = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._hung_up:
            return
        text = b"\r" + data if self._pending_cr else data  # a CR that ended the last chunk
        self._pending_cr = text.endswith(b"\r")
        text = text[:-1] if self._pending_cr else text
        crlf = text.count(b"\r\n")
        if text.count(b"\r") != crlf or text.count(b"\n") != crlf:
            self.close_with(replies.BARE_NEWLINE)
            return
        super().data_received(data)

    def close_with(self, reply: str) -> None:
        """Send one last reply and close; whatever the client sent after is never parsed."""
        transport = self.transport
        if transport is None or self._hung_up or transport.is_closing():
            return
        self._hung_up = True
        log.info("%r closing: %s", self.session and self.session.peer, reply)
        transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        transport.close()

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self._data_reader = reader  # DATA is read unchecked, in large runs (_read_data)
        super()._cb_client_connected(_CommandReader(reader), writer)  # type: ignore[arg-type]

    def _timeout_cb(self) -> None:
        self.close_with(replies.TIMEOUT)

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None and not getattr(self, "_mail_given", True):  # aiosmtpd's __init__ calls it
            duration = min(self.limits.idle_before_mail, self.limits.command_timeout)
        super()._reset_timeout(duration)

    async def push(self, status: Any) -> None:
        if status == "250-AUTH ":  # aiosmtpd advertises AUTH even with no mechanism left
            return
        if status == _EHLO_LAST:  # commands are read from a stream: pipelining works (RFC 2920)
            await super().push("250-PIPELINING")
        if isinstance(status, str):
            status = replies.with_enhanced_code(replies.AIOSMTPD_REWRITES.get(status, status))
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("%r TLS failed: %r", self.session and self.session.peer, error.__cause__)
            return replies.TEMP_FAILURE  # not sent: aiosmtpd closes the connection
        return replies.for_exception(error)

    def _getaddr(self, arg: str):
        """A plain <local@domain> without aiosmtpd's full RFC 5322 parse (same result); the rest with it."""
        fast = None if self.local_part_limit else fast_getaddr(arg)
        return fast if fast is not None else super()._getaddr(arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.clear()  # aiosmtpd adds 26 for SIZE on every EHLO
        await super().smtp_EHLO(hostname)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.envelope and self.envelope.mail_from:  # so HELO, AUTH and MAIL checks came first
            if len(self.envelope.rcpt_tos) >= self.limits.recipients:
                await self.push(replies.TOO_MANY_RCPT)
                return
            if arg and _SOURCE_ROUTE.match(arg):  # aiosmtpd would hand over only user@domain
                await self.push(replies.BAD_RCPT_SYNTAX)
                return
        await super().smtp_RCPT(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and _MAIL_SOURCE_ROUTE.match(arg):  # aiosmtpd would drop the route silently
            if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
                return
            await self.push(replies.BAD_SENDER_SYNTAX)
            return
        await super().smtp_MAIL(arg)
        if not self._mail_given and self.envelope.mail_from is not None:
            self._mail_given = True
            self._reset_timeout()  # the timer started before this command had the shorter limit

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos or arg:
            await self.push(replies.DATA_SYNTAX if arg else replies.NEED_RCPT)
            return
        await self.push(replies.START_DATA)
        self._reset_timeout(self.limits.data_timeout)
        try:
            content, problem = await self._read_data()
            self._reset_timeout()
            if problem is not None:
                log.info("%r message refused: %s", self.session and self.session.peer, problem)
                await self.push(problem)
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            await self.push(replies.OK if status is MISSING else status)
        finally:
            self._set_post_data_state()

    async def _read_data(self) -> tuple[bytes, str | None]:
        """Read up to <CRLF>.<CRLF>, dot-unstuffing; keep nothing once a limit is broken.

        Reads large runs at a time, never past the end marker: what follows it (a
        pipelined command) stays in the reader for the command loop. Each read stops
        at the rest of the marker that could have begun in what was read so far, so
        the marker is found whatever the packet boundaries. A message over the size
        limit is answered TOO_BIG even if it also has a line over 1000 octets.
        """
        reader, max_size = self._data_reader, self.limits.message_size
        kept: io.BytesIO | None = io.BytesIO()  # getvalue() hands its buffer over, uncopied
        seen = b"\r\n"  # the last octets read; the CRLF before the first line is implied
        carry = b""  # the start of a line not ended yet
        size, problem = -3, None  # wire octets, less the ".<CRLF>" of the end marker
        while True:
            ahead = bytes(getattr(reader, "_buffer", b"")[:4])  # peeked; aiosmtpd's STARTTLS clears it
            try:
                chunk = await reader.readuntil(_END_OF_DATA[_marker_begun(seen, ahead):])
            except asyncio.LimitOverrunError as exc:  # a long run without it: take the run
                chunk = await reader.read(exc.consumed)
            seen = (seen + chunk[-5:])[-5:]
            end = seen == _END_OF_DATA
            size += len(chunk)
            if size > max_size:
                problem = replies.TOO_BIG
            if kept is not None and problem is None:
                data = carry + chunk if carry else chunk
                cut = len(data) - 3 if end else data.rfind(b"\n") + 1  # every LF ends a CRLF
                lines, carry = _unstuffed(data[:cut]), data[cut:]
                if _too_long(lines) or _text_length(carry) > MAX_LINE_TEXT:
                    problem = replies.DATA_LINE_TOO_LONG
                else:
                    kept.write(lines)
            if problem is not None:
                kept, carry = None, b""
            if end:
                return (b"" if kept is None else kept.getvalue()), problem


class SMTPServer:
    """A listening gateway: ``await start()`` binds, ``await stop()`` closes it and its sessions."""

    def __init__(self, handler: Any, host: str, port: int, *, limits: Limits,
                 session_kwargs: dict[str, Any], reuse_port: bool = False,
                 guard: AuthGuard | None = None, privileged: Callable[[str], bool] = lambda ip: False) -> None:
        self.handler = handler
        self.reuse_port = reuse_port  # several serve processes share the port (SO_REUSEPORT)
        self.host = host
        self.limits = limits
        self.guard = guard  # checks AUTH (smtp/auth.py); None: AUTH is not offered
        self._port = port
        self._session_kwargs = session_kwargs
        self._server: asyncio.AbstractServer | None = None
        self.slots = Slots(total=limits.connections, per_ip=limits.connections_per_ip,
                           per_network=limits.connections_per_network,
                           reserved=limits.connections_reserved, privileged=privileged)
        self.live: set[GatewaySMTP] = set()

    def acquire(self, ip: str, session: GatewaySMTP) -> bool:
        """Count a new session in, unless that breaks a connection limit (smtp/slots.py)."""
        if not self.slots.acquire(ip, session):
            return False
        self.live.add(session)
        return True

    def release(self, ip: str, session: GatewaySMTP) -> None:
        self.live.discard(session)
        self.slots.release(session)

    @property
    def port(self) -> int:  # the bound one, after binding port 0
        return int(self._server.sockets[0].getsockname()[1]) if self._server else self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> GatewaySMTP:
            return GatewaySMTP(self.handler, sessions=self, loop=loop, **self._session_kwargs)

        self._server = await loop.create_server(factory, self.host, self._port,
                                                reuse_port=self.reuse_port or None)
        log.info("listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self.live):
            session.close_with(replies.SHUTTING_DOWN)
        await self._server.wait_closed()
        self._server = None


def make_server(handler: Any, host: str, port: int, *,
                tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                auth_required: bool = False, authenticator: Authenticator | None = None,
                limits: Limits = Limits(), hostname: str | None = None,
                reuse_port: bool = False, auth_guard: AuthGuard | None = None,
                privileged: Callable[[str], bool] = lambda ip: False) -> SMTPServer:
    """Build (not start) a gateway SMTP server; refuses settings that would silently weaken it.

    AUTH is offered (over TLS only) when there is an ``auth_guard``, or an
    ``authenticator`` (then with a guard of default limits). ``privileged(ip)``:
    may this client use the reserved connection slots.
    """
    if (require_starttls or auth_required) and tls_context is None:
        raise ConfigError("require_starttls and auth_required need a tls_context")
    guard = auth_guard or (AuthGuard(authenticator) if authenticator is not None else None)
    if auth_required and guard is None:
        raise ConfigError("auth_required needs an authenticator")
    kwargs = dict(hostname=hostname or socket.getfqdn(), ident="ESMTP", tls_context=tls_context,
                  require_starttls=require_starttls, auth_required=auth_required,
                  auth_exclude_mechanism=[] if guard else ["LOGIN", "PLAIN"])
    return SMTPServer(handler, host, port, limits=limits, session_kwargs=kwargs, reuse_port=reuse_port,
                      guard=guard, privileged=privileged)


@contextlib.asynccontextmanager
async def running_server(handler: Any, host: str = "127.0.0.1", port: int = 0,
                         **kwargs: Any) -> AsyncIterator[SMTPServer]:
    """Start a server for the duration of a block (port 0: a free port, see ``.port``)."""
    server = make_server(handler, host, port, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

