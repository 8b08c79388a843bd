"""Next-hop SMTP client: one transaction to a member gateway (STARTTLS, pinned key) or the office MTA.

A member gateway (``smtp:HOST:PORT:PIN``) must offer STARTTLS, and the
SubjectPublicKeyInfo SHA-256 of the certificate it presents must equal PIN (or one of
the pins of a member rotating its certificate: ``smtp:HOST:PORT:PIN,PIN``).
The CA chain is not checked (self-signed certificates are normal in the
federation); the pin is the authentication. No STARTTLS, a failed handshake or
a wrong key is a *temporary* failure: the message stays queued and is never
sent in clear. Replies read before the pin is verified are unauthenticated, so
a 5xx among them cannot bounce a message either (an on-path attacker could
inject one); only an authenticated 5xx is permanent. The gateway shows its own
certificate (``tls_client_cert``: securemail.toml's tls_cert and tls_key) as a
client certificate: the member at the other end accepts mail from our domains
only from a session whose client certificate has our manifest pin.

The office MTA (``relay:HOST:PORT``) is inside the office: plain SMTP.

Several recipients of one message with the same next hop go in one
transaction (one MAIL, several RCPT, one DATA); when the server offers
PIPELINING they go in one write (``pipelining``). ``deliver_smtp`` never
raises for a network or protocol problem: it returns an ``Outcome``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import re
import ssl
from collections.abc import Sequence

import aiosmtplib

from securemail.crypto.tlspin import der_pin
from securemail.transform.hops import Hop, RelayHop, SmtpHop
from securemail.delivery.outcome import PERMANENT, TEMPORARY, Outcome, clean, from_reply, temporary
from securemail.delivery.pipelining import (CLOSING, DATA, END, MAIL, RCPT, BadReply,
                                            all_refused, encode_body_parts, expect, send_pipelined)
from securemail.errors import UsageError

log = logging.getLogger(__name__)
BIG_BODY = 1 << 20  # bodies above this are written in pieces of this size

TlsClientCert = ssl.SSLContext  # a client context with our certificate: ``client_tls_context``

# Our own phrases for failures no server answered (stored, audited, shown in DSNs).
NO_STARTTLS = "member gateway did not offer STARTTLS; not sent in clear"
TLS_FAILED = "TLS handshake with member gateway failed"
PIN_MISMATCH = "member gateway certificate does not match its pinned key"
UNAUTHENTICATED = "member gateway refused before TLS was established"
TIMED_OUT = "connection timed out"
CONNECT_FAILED = "connection failed"
CONNECTION_LOST = "connection lost"
NO_SMTPUTF8 = "next hop does not support SMTPUTF8 for a non-ASCII address"
BAD_ADDRESS = "address cannot be sent over SMTP"
BAD_REPLY = "next hop's reply did not fit the command; session closed"
_UNSENDABLE = re.compile(r"[<>\s\x00-\x1f\x7f]")  # \s is str.isspace (Unicode whitespace)


class _Stop(Exception):
    """Ends the transaction early with an outcome (internal)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


async def deliver_smtp(hop: Hop, mail_from: str, rcpt: str | Sequence[str], body: bytes,
                       *, helo: str, timeout: float = 60.0,
                       tls_client_cert: TlsClientCert | None = None) -> Outcome:
    """Send ``body`` from ``mail_from`` ("" = null sender) to ``rcpt`` (one or several) via ``hop``.

    ``timeout`` bounds each network step (connect, each command, the handshake).
    ``tls_client_cert`` is ``(cert_file, key_file)`` presented on a member gateway's STARTTLS.
    """
    rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    bad = check_args(hop, mail_from, rcpts)
    if bad is not None:
        return bad
    client = new_client(hop, helo, timeout)
    try:
        outcome = await _transaction(client, hop, mail_from, rcpts, body, tls_client_cert)
    except Exception as err:  # noqa: BLE001 - mapped below; anything unexpected is re-raised
        outcome = failure_outcome(err, hop, client)
    finally:
        client.close()
    _log(hop, rcpts, outcome)
    return outcome


def check_args(h: Hop, mail_from: str, rcpts: list[str]) -> Outcome | None:
    """None when the hop and addresses can go over SMTP, else the outcome to settle with."""
    if not isinstance(h, (SmtpHop, RelayHop)):
        raise UsageError(f"not an SMTP next hop: {h}")
    if not rcpts:
        raise UsageError("deliver_smtp needs at least one recipient")
    if not all(_sendable(a) for a in [mail_from, *rcpts]) or not all(rcpts):
        return Outcome(PERMANENT, None, BAD_ADDRESS)
    return None


def new_client(h: SmtpHop | RelayHop, helo: str, timeout: float) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname=h.host, port=h.port, timeout=timeout,
                           local_hostname=helo, use_tls=False, start_tls=False)


def failure_outcome(err: BaseException, h: SmtpHop | RelayHop, client: aiosmtplib.SMTP) -> Outcome:
    """The outcome of a session that ended in ``err``; re-raises what is not a network problem."""
    where = f"{h.kind}:{h.host}:{h.port}"
    if isinstance(err, _Stop):
        return err.outcome
    if isinstance(err, aiosmtplib.SMTPResponseException):
        outcome = from_reply(err.code, err.message)
        if isinstance(h, SmtpHop) and outcome.kind == PERMANENT and not _tls_up(client):
            outcome = Outcome(TEMPORARY, err.code, f"{UNAUTHENTICATED}: {outcome.message}")
        return outcome
    if isinstance(err, BadReply):
        return _failed(where, BAD_REPLY, err)
    if isinstance(err, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return _failed(where, TIMED_OUT, err)
    if isinstance(err, aiosmtplib.SMTPConnectError):
        return _failed(where, CONNECT_FAILED, err)
    if isinstance(err, aiosmtplib.SMTPServerDisconnected):
        return _failed(where, CONNECTION_LOST, err)
    if isinstance(err, ssl.SSLError):
        return _failed(where, TLS_FAILED, err)
    if isinstance(err, (OSError, aiosmtplib.SMTPException)):
        return _failed(where, CONNECT_FAILED, err)
    raise err


def _log(h: SmtpHop | RelayHop, rcpts: list[str], outcome: Outcome) -> None:
    log.log(logging.INFO if outcome.kind == "delivered" else logging.WARNING,
            "deliver %s:%s:%d: %d recipient(s): %s: %s", h.kind, h.host, h.port, len(rcpts),
            outcome.kind, outcome.describe())


async def _transaction(client: aiosmtplib.SMTP, h: SmtpHop | RelayHop, mail_from: str,
                       rcpts: list[str], body: bytes,
                       tls_client_cert: TlsClientCert | None) -> Outcome:
    await open_session(client, h, tls_client_cert)
    outcome = await send_mail(client, mail_from, rcpts, body)
    await _quit(client)
    return outcome


async def open_session(client: aiosmtplib.SMTP, h: SmtpHop | RelayHop,
                       tls_client_cert: TlsClientCert | None) -> None:
    """Connect, EHLO and, for a member gateway, STARTTLS with the pin check and EHLO again."""
    await client.connect()
    await _hello(client)
    if isinstance(h, SmtpHop):
        await _secure(client, h, tls_client_cert)
        await _hello(client)


async def send_mail(client: aiosmtplib.SMTP, mail_from: str, rcpts: list[str],
                    body: bytes, progress: list[str] | None = None) -> Outcome:
    """One MAIL/RCPT/DATA transaction on an open session; the session stays usable after it.

    With PIPELINING (RFC 2920) the commands go in one write (``pipelining``);
    without it, one at a time. ``progress`` gets "data" appended once the body
    is on its way, so a caller knows whether a failure could have left a copy
    at the next hop.
    """
    utf8 = not all(a.isascii() for a in [mail_from, *rcpts])
    if utf8 and not client.supports_extension("smtputf8"):
        return Outcome(PERMANENT, None, NO_SMTPUTF8)
    encoding = "utf-8" if utf8 else "ascii"
    options = [b"SMTPUTF8"] if utf8 else []
    if client.supports_extension("size"):
        options.append(b"SIZE=%d" % len(body))
    if not body.isascii() and client.supports_extension("8bitmime"):
        options.append(b"BODY=8BITMIME")
    sender = b"FROM:<" + mail_from.encode(encoding) + b">"
    if client.supports_extension("pipelining"):
        return await send_pipelined(
            client, b" ".join([b"MAIL", sender, *options]), rcpts,
            [b"RCPT TO:<" + r.encode(encoding) + b">" for r in rcpts], body, progress)
    reply = await _command(client, MAIL, b"MAIL", sender, *options)
    if reply.code // 100 != 2:
        await _rset(client)
        return from_reply(reply.code, reply.message)
    refused: dict[str, Outcome] = {}
    for rcpt in rcpts:
        reply = await _command(client, RCPT, b"RCPT", b"TO:<" + rcpt.encode(encoding) + b">")
        if reply.code // 100 != 2:
            refused[rcpt] = from_reply(reply.code, reply.message)
    if len(refused) == len(rcpts):
        await _rset(client)
        return all_refused(refused)
    reply = await _command(client, DATA, b"DATA")
    if reply.code == 354:
        if progress is not None:
            progress.append("data")
        reply = expect(await _send_body(client, body), END)
    else:
        await _rset(client)
    outcome = from_reply(reply.code, reply.message)
    return Outcome(outcome.kind, outcome.code, outcome.message, refused)


async def _command(client: aiosmtplib.SMTP, classes: tuple[int, ...],
                   *args: bytes) -> aiosmtplib.SMTPResponse:
    """One command's reply; a 421 (closing) is raised, as is a reply that cannot answer it."""
    reply = await client.execute_command(*args)
    if reply.code == CLOSING:
        client.close()
        raise aiosmtplib.SMTPResponseException(reply.code, reply.message)
    return expect(reply, classes)


async def _send_body(client: aiosmtplib.SMTP, body: bytes) -> aiosmtplib.SMTPResponse:
    """After a 354: the body in one write, and the end-of-data reply (as ``SMTP.data`` reads it)."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        parts = encode_body_parts(body)
        if len(body) <= BIG_BODY:
            protocol.write(b"".join(parts))
        else:  # in pieces, waiting for the transport: no joined copy, no whole copy in its buffers
            for part in parts:
                view = memoryview(part)
                for i in range(0, len(view), BIG_BODY):
                    protocol.write(view[i:i + BIG_BODY])
                    await asyncio.wait_for(protocol._drain_helper(), client.timeout)
        return await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


async def _rset(client: aiosmtplib.SMTP) -> None:
    """End a refused transaction; the outcome is decided, so a failure only closes the session."""
    try:
        await client.rset()
    except aiosmtplib.SMTPResponseException:
        pass
    except (aiosmtplib.SMTPException, OSError):
        client.close()


async def _hello(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _secure(client: aiosmtplib.SMTP, h: SmtpHop,
                  tls_client_cert: TlsClientCert | None) -> None:
    """STARTTLS and the pin check; any failure is temporary and ends the session."""
    if not client.supports_extension("starttls"):
        raise _Stop(temporary(NO_STARTTLS))
    try:
        await client.starttls(tls_context=_tls_context(tls_client_cert), server_hostname=h.host)
    except aiosmtplib.SMTPResponseException as err:
        raise _Stop(Outcome(TEMPORARY, err.code, f"STARTTLS refused: {clean(err.message)}"))
    except ssl.SSLError as err:
        log.warning("smtp %s:%d: TLS handshake failed: %s", h.host, h.port, err)
        raise _Stop(temporary(TLS_FAILED))
    ssl_object = client.get_transport_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    got = der_pin(der) if der else None
    if got is None or not any([hmac.compare_digest(got, pin) for pin in h.pins]):
        log.warning("smtp %s:%d: certificate key %s does not match pin %s; closing",
                    h.host, h.port, got, ",".join(h.pins))
        raise _Stop(temporary(PIN_MISMATCH))


def _tls_context(tls_client_cert: TlsClientCert | None) -> ssl.SSLContext:
    return tls_client_cert if tls_client_cert is not None else _context(None, None)


def client_tls_context(cert: str | os.PathLike, key: str | os.PathLike) -> TlsClientCert:
    """The context that presents our certificate to member gateways, read once at start like the
    listeners' (a file removed or replaced later changes nothing until the gateway restarts)."""
    return _context(str(cert), str(key))


@functools.lru_cache(maxsize=8)
def _context(cert: str | None, key: str | None) -> ssl.SSLContext:
    """A client context that does not verify the chain (the pin does) and needs TLS 1.2+."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _tls_up(client: aiosmtplib.SMTP) -> bool:
    transport = client.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely; the outcome is already decided, so errors here do not matter."""
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass


def _sendable(address: str) -> bool:
    """No brackets, spaces or controls: nothing that could break or extend the command line."""
    return _UNSENDABLE.search(address) is None


def _failed(where: str, message: str, err: BaseException) -> Outcome:
    log.debug("smtp %s: %s: %r", where, message, err)
    return temporary(message)
