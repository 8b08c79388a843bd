"""Null SMTP sink: answers 250 to everything and logs when each Message-ID arrived.

It stands in for the next hop (the receiving member gateway, or the MTA a
gpg filter re-injects into). With ``--tls-cert``/``--tls-key`` it offers
STARTTLS with that certificate, so a sending gateway's pin check passes when
they are the receiving gateway's own ``tls/cert.pem`` and ``tls/key.pem``.
Nothing is decrypted or stored: one line per message goes to ``--log``::

    <message-id>\\t<arrival time, time.time()>\\t<size in bytes>

The size is the message as the client meant it: dot-unstuffed, up to and
including the CRLF before the final dot (what aiosmtpd calls original_content).

With ``--wkd-listen`` it also answers the receiving gateway's key directory
(HTTPS, same certificate) with 404 to every request: "no key published for
this user", so the sending gateway encrypts to the domain key from the
manifest, as it would for a user whose own key is unknown.

It shares the 2 cores with the gateway it measures, so it is a small
asyncio.Protocol rather than aiosmtpd (whose per-line coroutines cost about
1.6 ms of CPU per 4 KiB message): EHLO/HELO (PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, and STARTTLS until TLS is up), STARTTLS, MAIL, RCPT, DATA, RSET,
NOOP, QUIT. Commands are handled in order as a sequence of lines, however
they arrive (pipelined or split), and the replies to one read go out in one
write. DATA is read in whatever chunks arrive, looking for CRLF.CRLF from
where the previous search stopped (a marker split across reads is found).

Run as its own process (so its CPU is not the load generator's)::

    python -m bench.sinks --listen 127.0.0.1:2600 --log /tmp/arrivals.tsv \\
        [--tls-cert gw/tls/cert.pem --tls-key gw/tls/key.pem] [--wkd-listen 127.0.0.1:2601]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import ssl
import sys
import time
import warnings
from pathlib import Path

MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*<([^>\r\n]+)>")
DATA_LIMIT = 128 << 20  # bytes; the 25 MB test message is ~34 MB once armored
LINE_LIMIT = 4096       # a command line longer than this closes the connection
END = b"\r\n.\r\n"
SIZE_PARAM = re.compile(rb"(?i)\sSIZE=(\d+)")
log = logging.getLogger("bench.sinks")


def message_id(data: bytes) -> str:
    """The first Message-ID in the header block ('-' when there is none)."""
    end = data.find(b"\r\n\r\n")
    m = MESSAGE_ID.search(data[: end if end >= 0 else 64 << 10])
    return m.group(1).decode("ascii", "replace") if m else "-"


class ArrivalLog:
    def __init__(self, log_file: Path) -> None:
        self.out = open(log_file, "a", buffering=1)  # one line per message, flushed per line
        self.count = 0

    def arrived(self, head: bytes, size: int) -> None:
        self.out.write(f"{message_id(head)}\t{time.time():.6f}\t{size}\n")
        self.count += 1


class SinkSMTP(asyncio.Protocol):
    """One SMTP session. ``buf`` holds unprocessed bytes: command lines, or the message in DATA."""

    def __init__(self, arrivals: ArrivalLog, tls: ssl.SSLContext | None, hostname: str) -> None:
        self.arrivals, self.tls, self.hostname = arrivals, tls, hostname
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.in_data = False
        self.scanned = 0          # DATA: END is not in buf[:scanned - 4]
        self.secure = False
        self.handshake: asyncio.Task | None = None
        self.greeted = False
        self.mail = False
        self.rcpts = 0

    # --- transport events -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 %s ESMTP null sink\r\n" % self.hostname.encode())

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.transport is None:  # closed, or during STARTTLS: TLS may hand over data (the
            return                  # client's EHLO) before start_tls() returns the transport
        out: list[bytes] = []
        while self.transport is not None:
            if self.in_data:
                if not self._end_of_data(out):
                    break
            elif not self._command(out):
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    # --- DATA -----------------------------------------------------------------------
    def _end_of_data(self, out: list[bytes]) -> bool:
        """Find CRLF.CRLF; on it log the message, reply and go back to commands. False: need more."""
        buf = self.buf
        i = buf.find(END, max(0, self.scanned - 4))
        if i < 0:
            self.scanned = len(buf)
            return False
        # buf starts with the CRLF put in front of the data, so a first line "." is found too;
        # the message is buf[2:i + 2]; each CRLF. inside it is a line that was dot-stuffed.
        size = i - buf.count(b"\r\n.", 0, i + 2)
        if size > DATA_LIMIT:
            out.append(b"552 5.3.4 message too big\r\n")
        else:
            self.arrivals.arrived(bytes(buf[2:min(i + 2, 2 + (64 << 10))]), size)
            out.append(b"250 2.0.0 OK: discarded\r\n")
        del buf[:i + 5]
        self.in_data, self.scanned = False, 0
        self.mail, self.rcpts = False, 0
        return True

    # --- commands -------------------------------------------------------------------
    def _command(self, out: list[bytes]) -> bool:
        """Handle the first complete line of ``buf``. False: no complete line yet."""
        buf = self.buf
        n = buf.find(b"\n")
        if n < 0:
            if len(buf) > LINE_LIMIT:
                out.append(b"500 5.5.2 line too long\r\n")
                self._close(out)
            return False
        line = bytes(buf[:n]).rstrip(b"\r")
        del buf[:n + 1]
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            self._reset()
            self.greeted = True
            ext = [self.hostname.encode(), b"PIPELINING", b"SIZE %d" % DATA_LIMIT, b"8BITMIME", b"SMTPUTF8"]
            if self.tls is not None and not self.secure:
                ext.append(b"STARTTLS")
            out.append(b"".join(b"250-%s\r\n" % e for e in ext[:-1]) + b"250 %s\r\n" % ext[-1])
        elif verb == b"HELO":
            self._reset()
            self.greeted = True
            out.append(b"250 %s\r\n" % self.hostname.encode())
        elif verb == b"MAIL":
            if not self.greeted:
                out.append(b"503 5.5.1 EHLO first\r\n")
            elif self.mail:
                out.append(b"503 5.5.1 nested MAIL command\r\n")
            elif not arg.upper().startswith(b"FROM:"):
                out.append(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n")
            elif (m := SIZE_PARAM.search(arg)) and int(m.group(1)) > DATA_LIMIT:
                out.append(b"552 5.3.4 message too big\r\n")
            else:
                self.mail = True
                out.append(b"250 2.1.0 OK\r\n")
        elif verb == b"RCPT":
            if not self.mail:
                out.append(b"503 5.5.1 MAIL first\r\n")
            elif not arg.upper().startswith(b"TO:"):
                out.append(b"501 5.5.4 syntax: RCPT TO:<address>\r\n")
            else:
                self.rcpts += 1
                out.append(b"250 2.1.5 OK\r\n")
        elif verb == b"DATA":
            if not self.rcpts:
                out.append(b"503 5.5.1 RCPT first\r\n" if self.mail else b"503 5.5.1 MAIL first\r\n")
            else:
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data, self.scanned = True, 0
                buf[:0] = b"\r\n"  # so that a message whose first line is "." ends there
        elif verb == b"RSET":
            self._reset()
            out.append(b"250 2.0.0 OK\r\n")
        elif verb == b"NOOP":
            out.append(b"250 2.0.0 OK\r\n")
        elif verb == b"QUIT":
            out.append(b"221 2.0.0 Bye\r\n")
            self._close(out)
            return False
        elif verb == b"STARTTLS":
            if self.tls is None or self.secure:
                out.append(b"502 5.5.1 STARTTLS not available\r\n" if self.tls is None
                           else b"503 5.5.1 TLS already active\r\n")
            else:
                out.append(b"220 2.0.0 Ready to start TLS\r\n")
                self._start_tls(out)
                return False
        else:
            out.append(b"500 5.5.2 command not recognized\r\n")
        return True

    def _reset(self) -> None:
        self.mail, self.rcpts = False, 0

    def _close(self, out: list[bytes]) -> None:
        t, self.transport = self.transport, None
        t.write(b"".join(out))
        out.clear()
        t.close()

    def _start_tls(self, out: list[bytes]) -> None:
        """Write the 220 and hand the socket to TLS; what the client sent after STARTTLS is dropped."""
        t = self.transport
        t.write(b"".join(out))
        out.clear()
        t.pause_reading()  # no plaintext data_received before start_tls takes the transport over
        self.transport = None
        self.buf = bytearray()
        self.handshake = asyncio.get_running_loop().create_task(self._handshake(t))

    async def _handshake(self, t: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(t, self, self.tls, server_side=True, ssl_handshake_timeout=30)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as err:
            log.debug("TLS handshake failed: %r", err)
            t.close()
            return
        if tls.is_closing():
            return
        self.transport, self.secure, self.greeted = tls, True, False
        self._reset()
        if self.buf:
            self.data_received(b"")


def read_arrivals(path: Path) -> list[tuple[str, float, int]]:
    """The sink's log as (message id, arrival time, size); an incomplete last line is skipped."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((parts[0], float(parts[1]), int(parts[2])))
    return out


async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A null key directory: read one HTTP request head, answer 404, close."""
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, arrivals: ArrivalLog, tls: ssl.SSLContext | None,
                wkd: tuple[str, int] | None = None, hostname: str = "sink.bench") -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: SinkSMTP(arrivals, tls, hostname), host, port)]
    if wkd:
        servers.append(await asyncio.start_server(not_found, wkd[0], wkd[1], ssl=tls))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sinks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--log", required=True, type=Path, help="arrivals file (appended)")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--wkd-listen", help="HOST:PORT for a null HTTPS key directory (404; needs --tls-cert)")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    host, _, port = a.listen.rpartition(":")
    wkd = a.wkd_listen.rpartition(":") if a.wkd_listen else None
    asyncio.run(serve(host, int(port), ArrivalLog(a.log), tls_context(a.tls_cert, a.tls_key),
                      (wkd[0], int(wkd[2])) if wkd else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
