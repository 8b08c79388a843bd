"""LMTP client (RFC 2033): local delivery to the office's mailbox server, a status for each recipient.

``deliver_lmtp`` runs one transaction on a fresh connection to an ``lmtp:`` hop
(``delivery.lmtp``: TCP HOST:PORT, or a unix socket path): LHLO, MAIL, one RCPT
per recipient, DATA, the dot-stuffed body, then one reply for each recipient
RCPT accepted, in RCPT order (RFC 2033 section 4.2). Each recipient is settled
by its own reply: 2xx delivered, 4xx deferred (only that one is retried), 5xx
bounced (only that one gets a DSN). The returned ``Outcome`` has every
recipient's own outcome in ``refused``, so ``for_recipient`` gives it.

aiosmtplib (5.1) does not speak LMTP: it says EHLO and reads one reply after the
body. Hence this small client on asyncio streams: every read is bounded (a line
of ``MAX_LINE`` bytes, a reply of ``MAX_LINES`` lines) and every step has the
timeout, as ``smtp.py``. A reply that cannot answer its command ends the session.

The LMTP server is inside the office (Dovecot on loopback or a unix socket),
named by the operator's configuration, never by mail: no TLS and no AUTH, as
Dovecot's LMTP offers neither. A greeting or LHLO refused is temporary for
everyone (the server is not ready; the mail waits). Once the body has been sent,
a recipient whose reply never came (connection lost, timeout) is deferred: the
server may have delivered it already, and a duplicate is better than a loss.
The replies read before that are kept. Network faults and broken replies become
an ``Outcome``; anything else is a bug and is raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from securemail.transform.hops import Hop, LmtpHop
from securemail.delivery.outcome import DELIVERED, PERMANENT, TEMPORARY, Outcome, from_reply, temporary
from securemail.delivery.pipelining import CLOSING, DATA, END, MAIL, MAX_LINE, RCPT, commands, encode_body_parts
from securemail.delivery.smtp import (BAD_ADDRESS, BAD_REPLY, BIG_BODY, CONNECT_FAILED, CONNECTION_LOST,
                                      NO_SMTPUTF8, TIMED_OUT, _sendable)
from securemail.errors import UsageError

log = logging.getLogger(__name__)

MAX_LINES = 100          # lines of one reply (LHLO's list of extensions is a handful)
GREETING = LHLO = (2, 4, 5)   # what may answer: a refusal is "not ready", temporary
NOT_READY = "LMTP server not ready"


class _Broken(Exception):
    """A reply that cannot answer its command, or longer than the bounds: the session is out of step."""


class _Stop(Exception):
    """Ends the transaction early with an outcome for everyone not settled yet (a 421, a refusal)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


async def deliver_lmtp(hop: Hop, mail_from: str, rcpt: str | Sequence[str], body: bytes,
                       *, helo: str, timeout: float = 60.0) -> Outcome:
    """Deliver ``body`` from ``mail_from`` ("" = null sender) to ``rcpt`` (one or several) over LMTP.

    ``timeout`` bounds each step: the connection, each command's reply, each write of the body
    and each recipient's reply after it.
    """
    h = hop
    if not isinstance(h, LmtpHop):
        raise UsageError(f"not an LMTP next hop: {h}")
    rcpts = list(dict.fromkeys([rcpt] if isinstance(rcpt, str) else rcpt))
    if not rcpts:
        raise UsageError("deliver_lmtp needs at least one recipient")
    if not all(rcpts) or not all(_sendable(a) for a in [mail_from, *rcpts]):
        return Outcome(PERMANENT, None, BAD_ADDRESS)
    settled: dict[str, Outcome] = {}   # each recipient's outcome, as soon as it is known
    session = _Session(timeout)
    try:
        await session.open(h)
        await _transaction(session, helo, mail_from, rcpts, body, settled)
        await session.quit()
        outcome = _summary(rcpts, settled)
    except (_Stop, _Broken, OSError, TimeoutError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError) as err:  # anything else is a bug: raised
        outcome = _summary(rcpts, settled, _fault(err, h, session.reader is not None))
    finally:
        session.close()
    _log(h, rcpts, outcome)
    return outcome


async def _transaction(session: "_Session", helo: str, mail_from: str, rcpts: list[str], body: bytes,
                       settled: dict[str, Outcome]) -> None:
    """LHLO, MAIL, RCPT..., DATA, the body and one reply per accepted recipient, into ``settled``."""
    code, text = await session.reply(GREETING)
    if code != 220:
        raise _Stop(Outcome(TEMPORARY, code, f"{NOT_READY}: {from_reply(code, text).message}"))
    code, text = await session.command(b"LHLO " + helo.encode("ascii"), LHLO)
    if code != 250:
        raise _Stop(Outcome(TEMPORARY, code, f"{NOT_READY}: {from_reply(code, text).message}"))
    extensions = {line.split(" ", 1)[0].upper() for line in text.split("\n")[1:]}
    utf8 = not all(a.isascii() for a in [mail_from, *rcpts])
    if utf8 and "SMTPUTF8" not in extensions:
        raise _Stop(Outcome(PERMANENT, None, NO_SMTPUTF8))
    encoding = "utf-8" if utf8 else "ascii"
    options = [b"SMTPUTF8"] if utf8 else []
    if not body.isascii() and "8BITMIME" in extensions:
        options.append(b"BODY=8BITMIME")
    sender = b"MAIL FROM:<" + mail_from.encode(encoding) + b">"
    code, text = await session.command(b" ".join([sender, *options]), MAIL)
    if code // 100 != 2:
        raise _Stop(from_reply(code, text))
    accepted = []
    for r in rcpts:
        code, text = await session.command(b"RCPT TO:<" + r.encode(encoding) + b">", RCPT)
        if code // 100 == 2:
            accepted.append(r)
        else:
            settled[r] = from_reply(code, text)
    if not accepted:
        await session.rset()
        return
    code, text = await session.command(b"DATA", DATA)
    if code != 354:
        raise _Stop(from_reply(code, text))
    await session.send_body(body)
    for r in accepted:  # RFC 2033 4.2: one reply for each accepted RCPT, in order
        code, text = await session.reply(END, closing_ends=False)
        settled[r] = from_reply(code, text)


def _summary(rcpts: list[str], settled: dict[str, Outcome], rest: Outcome | None = None) -> Outcome:
    """The transaction's outcome, each recipient's own in ``refused``; ``rest`` for those not settled.

    Its kind (for the log) is the worst there is: temporary, then permanent, then delivered.
    """
    each = {r: settled.get(r, rest) for r in rcpts}
    if any(o is None for o in each.values()):
        raise AssertionError("a recipient of the LMTP transaction was left without an outcome")
    for kind in (TEMPORARY, PERMANENT, DELIVERED):
        first = next((o for o in each.values() if o.kind == kind), None)
        if first is not None:
            return Outcome(kind, first.code, first.message, each)
    raise AssertionError("unreachable: an outcome has one of three kinds")


def _fault(err: BaseException, h: LmtpHop, connected: bool) -> Outcome:
    """The outcome for the recipients not settled when the session ended in ``err``."""
    if isinstance(err, _Stop):
        return err.outcome
    message = (TIMED_OUT if isinstance(err, TimeoutError)
               else BAD_REPLY if isinstance(err, (_Broken, asyncio.LimitOverrunError))
               else CONNECTION_LOST if connected else CONNECT_FAILED)
    log.warning("lmtp %s: %s: %r", h, message, err)  # the detail for the operator, not for a DSN
    return temporary(message)


def _log(h: LmtpHop, rcpts: list[str], outcome: Outcome) -> None:
    kinds = [outcome.for_recipient(r).kind for r in rcpts]
    log.log(logging.INFO if outcome.kind == DELIVERED else logging.WARNING,
            "deliver %s: %d recipient(s): %d delivered, %d deferred, %d bounced: %s", h, len(rcpts),
            kinds.count(DELIVERED), kinds.count(TEMPORARY), kinds.count(PERMANENT), outcome.describe())


class _Session:
    """One LMTP connection: commands written whole, replies read within bounds, each with the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, h: LmtpHop) -> None:
        connect = (asyncio.open_unix_connection(h.path, limit=MAX_LINE) if h.path
                   else asyncio.open_connection(h.host, h.port, limit=MAX_LINE))
        self.reader, self.writer = await asyncio.wait_for(connect, self.timeout)

    async def reply(self, classes: tuple[int, ...], closing_ends: bool = True) -> tuple[int, str]:
        """The next reply, if its class can answer the command; a 421 ends the session (``_Stop``)
        unless ``closing_ends`` is false (after the body, a 421 is one recipient's reply)."""
        code, lines = None, []
        async with asyncio.timeout(self.timeout):  # the whole reply, however many lines
            while True:
                line = await self.reader.readuntil(b"\n")
                if (not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n")
                        or code not in (None, int(line[:3])) or len(lines) >= MAX_LINES):
                    raise _Broken("malformed LMTP reply")
                code = int(line[:3])
                lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "replace"))
                if line[3:4] != b"-":
                    break
        if code == CLOSING and closing_ends:
            raise _Stop(from_reply(code, " ".join(lines)))
        if code // 100 not in classes or (code // 100 == 3 and code != 354):
            raise _Broken(f"reply {code} does not fit the command")
        return code, "\n".join(lines)

    async def command(self, line: bytes, classes: tuple[int, ...]) -> tuple[int, str]:
        await self.write(commands(line))
        return await self.reply(classes)

    async def write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def send_body(self, body: bytes) -> None:
        """After a 354: the body dot-stuffed with CRLF line ends, in pieces of at most ``BIG_BODY``."""
        for part in encode_body_parts(body):
            view = memoryview(part)
            for i in range(0, len(view), BIG_BODY):
                await self.write(view[i:i + BIG_BODY])

    async def rset(self) -> None:
        """End a transaction with no recipient accepted; the outcome is decided already."""
        await self.command(b"RSET", MAIL)

    async def quit(self) -> None:
        """QUIT politely; every recipient is settled, so a failure here changes nothing."""
        try:
            await self.command(b"QUIT", MAIL)
        except (_Stop, _Broken, OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
