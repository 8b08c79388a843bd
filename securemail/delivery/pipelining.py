"""Next-hop SMTP with PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write, the body in one.

``send_pipelined`` runs one transaction on a session opened by ``smtp``
whose server advertised PIPELINING. While it runs, a ``Replies`` reader
stands in for aiosmtplib's protocol on the transport: aiosmtplib keeps one
reply at a time and drops what arrives while none is awaited, so several
replies in flight are not safe with it. ``Replies`` keeps every byte, takes
the replies off in order, and checks each one can answer its command.

The semantics are those of the command-by-command path in ``smtp``: a
refused MAIL settles the transaction with that reply, refused recipients are
kept in ``Outcome.refused``, the body is sent only after a 354 to DATA with
MAIL and at least one RCPT accepted. RFC 2920 section 3.1: a server that
answers 354 although nothing was accepted gets an empty message (".") and
its reply is discarded. Anything out of the ordinary (a reply that does not
fit its command, bytes left over, a 354 with nothing accepted, a failed
RSET) closes the session, so a reply is never read for the wrong command.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import SMTPResponse

from securemail.delivery.outcome import PERMANENT, TEMPORARY, Outcome, from_reply

CLOSING = 421                    # the server is closing the channel (RFC 5321 4.2.2)
MAX_LINE = 8192                  # as aiosmtplib
MAX_BUFFERED = 1 << 20           # reply bytes kept unread before the session is given up

# The reply classes that can answer each command; anything else means the session is out of step.
MAIL, RCPT, DATA, END = (2, 4, 5), (2, 4, 5), (3, 4, 5), (2, 4, 5)

_BARE = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class BadReply(aiosmtplib.SMTPException):
    """A reply that cannot answer the command it was read for: the session is out of step."""


def encode_body(body: bytes) -> bytes:
    """``body`` as it goes after DATA: CRLF line endings, dot-stuffed, ending with CRLF.CRLF."""
    return b"".join(encode_body_parts(body))


def encode_body_parts(body: bytes) -> list[bytes]:
    """``encode_body`` as pieces to write one after the other: a body that needs no change is
    not copied (a 34 MB armored message stays one object)."""
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        body = _BARE.sub(b"\r\n", body)  # a bare LF or CR: normalise, as aiosmtplib would
    parts = [b"." if body.startswith(b".") else b"", body.replace(b"\r\n.", b"\r\n..")]
    parts.append(b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n")
    return [p for p in parts if p]


def expect(reply: SMTPResponse, classes: tuple[int, ...]) -> SMTPResponse:
    """``reply`` if its class can answer the command, else BadReply (never misattribute it)."""
    if reply.code // 100 not in classes or (reply.code // 100 == 3 and reply.code != 354):
        raise BadReply(f"reply {reply.code} does not fit the command")
    return reply


def commands(*lines: bytes) -> bytes:
    """Command lines for one write; a control character could smuggle in another command."""
    for line in lines:
        if _CONTROL.search(line):
            raise ValueError("command contains a prohibited control character")
    return b"\r\n".join(lines) + b"\r\n"


def all_refused(refused: dict[str, Outcome]) -> Outcome:
    """The transaction's outcome when every RCPT was refused (each keeps its own)."""
    first = next(iter(refused.values()))
    kind = TEMPORARY if any(o.kind == TEMPORARY for o in refused.values()) else PERMANENT
    return Outcome(kind, first.code, first.message, refused)


async def send_pipelined(client: aiosmtplib.SMTP, mail: bytes, rcpts: Sequence[str],
                         rcpt_commands: Sequence[bytes], body: bytes,
                         progress: list[str] | None) -> Outcome:
    """One transaction: ``mail`` and ``rcpt_commands`` (without CRLF) and DATA in one write."""
    with Replies(client) as replies:
        replies.send(commands(mail, *rcpt_commands, b"DATA"))
        mail_reply = expect(await replies.next(), MAIL)
        refused: dict[str, Outcome] = {}
        for rcpt in rcpts:
            reply = expect(await replies.next(), RCPT)
            if reply.code // 100 != 2:
                refused[rcpt] = from_reply(reply.code, reply.message)
        data_reply = expect(await replies.next(), DATA)
        if mail_reply.code // 100 != 2 or len(refused) == len(rcpts):  # nothing to send
            outcome = (all_refused(refused) if mail_reply.code // 100 == 2
                       else from_reply(mail_reply.code, mail_reply.message))
            if data_reply.code == 354:  # nothing accepted, yet DATA was: an empty message
                await replies.end(b".")
                replies.spoil()
            else:
                await replies.end(b"RSET")
            return outcome
        if data_reply.code != 354:
            await replies.end(b"RSET")
            reply = data_reply
        else:
            if progress is not None:
                progress.append("data")
            replies.send(encode_body(body))
            reply = expect(await replies.next(), END)
    outcome = from_reply(reply.code, reply.message)
    return Outcome(outcome.kind, outcome.code, outcome.message, refused)


class Replies(asyncio.Protocol):
    """The session's reader during one pipelined transaction; put back or closed on exit."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.inner = client.protocol
        self.transport = self.inner.transport if self.inner is not None else None
        self.timeout = client.timeout
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: Exception | None = None
        self.spoiled = False

    def __enter__(self) -> Replies:
        if self.transport is None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        self.transport.set_protocol(self)
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.transport.set_protocol(self.inner)  # bytes after this are unsolicited: it drops them
        if kind is not None or self.spoiled or self.buffer or self.lost is not None:
            self.client.close()

    def spoil(self) -> None:
        """Do not reuse the session after this transaction."""
        self.spoiled = True

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            raise self.lost
        if self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def next(self) -> SMTPResponse:
        """The next reply; a 421 closes the session and is raised."""
        while (reply := self._take()) is None:
            if self.lost is not None:
                raise self.lost
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            timer = (None if self.timeout is None else
                     loop.call_later(self.timeout, self._expire, self.waiter))
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        if reply.code == CLOSING:
            self.spoil()
            raise aiosmtplib.SMTPResponseException(reply.code, reply.message)
        return reply

    async def end(self, command: bytes) -> None:
        """RSET (or "." after an unwanted 354): the outcome is decided, so a failure only spoils."""
        try:
            self.send(command + b"\r\n")
            if (await self.next()).code != 250:
                self.spoil()
        except (aiosmtplib.SMTPException, OSError):
            self.spoil()

    def _take(self) -> SMTPResponse | None:
        """The first complete reply in the buffer (taken off it), None if it is not all here yet."""
        buffer, offset, code, lines = self.buffer, 0, None, []
        while (end := buffer.find(b"\n", offset)) >= 0:
            line = bytes(buffer[offset:end + 1])
            if (len(line) > MAX_LINE or not line[:3].isdigit() or line[3:4] not in b" -\r\n"
                    or code not in (None, int(line[:3]))):
                raise aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line")
            code, offset = int(line[:3]), end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del buffer[:offset]
                return SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape"))
        if len(buffer) - offset > MAX_LINE:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        return None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(aiosmtplib.SMTPReadTimeoutError(
                "Timed out waiting for server response"))

    # asyncio.Protocol: every byte is kept; connection loss is passed on to aiosmtplib's protocol.
    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_BUFFERED and self.lost is None:
            self.lost = aiosmtplib.SMTPResponseException(-1, "Response too long")
        self._wake()

    def eof_received(self) -> bool:
        if self.lost is None:
            self.lost = aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._wake()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
