"""Null SMTP sink: answers 250 to everything and logs when each Message-ID arrived.

It stands in for the next hop (the receiving member gateway, or the MTA a
gpg filter re-injects into). With ``--tls-cert``/``--tls-key`` it offers
STARTTLS with that certificate, so a sending gateway's pin check passes when
they are the receiving gateway's own ``tls/cert.pem`` and ``tls/key.pem``.
Nothing is decrypted or stored: one line per message goes to ``--log``::

    <message-id>\\t<arrival time, time.time()>\\t<size in bytes>

With ``--wkd-listen`` it also answers the receiving gateway's key directory
(HTTPS, same certificate) with 404 to every request: "no key published for
this user", so the sending gateway encrypts to the domain key from the
manifest, as it would for a user whose own key is unknown.

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

from aiosmtpd.smtp import SMTP

MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*<([^>\r\n]+)>")
DATA_LIMIT = 128 << 20  # bytes; the 25 MB test message is ~34 MB once armored


def message_id(data: bytes) -> str:
    """The first Message-ID in the header block ('-' when there is none)."""
    end = data.find(b"\r\n\r\n")
    m = MESSAGE_ID.search(data[: end if end >= 0 else 64 << 10])
    return m.group(1).decode("ascii", "replace") if m else "-"


class NullHandler:
    def __init__(self, log_file: Path) -> None:
        self.out = open(log_file, "a", buffering=1)  # one line per message, flushed per line
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        data = envelope.original_content or b""
        self.out.write(f"{message_id(data)}\t{time.time():.6f}\t{len(data)}\n")
        self.count += 1
        return "250 2.0.0 OK: discarded"


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


async def serve(host: str, port: int, handler, tls: ssl.SSLContext | None,
                wkd: tuple[str, int] | None = None, hostname: str = "sink.bench") -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, tls_context=tls, data_size_limit=DATA_LIMIT,
                     enable_SMTPUTF8=True, decode_data=False, timeout=600, loop=loop),
        host, port)]
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
    asyncio.run(serve(host, int(port), NullHandler(a.log), tls_context(a.tls_cert, a.tls_key),
                      (wkd[0], int(wkd[2])) if wkd else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
