"""The baselines securemail's gateway is measured against, each an aiosmtpd server in its own process.

floor-smtp   aiosmtpd whose handler only answers 250: the cost of SMTP in Python
floor-queue  aiosmtpd that commits each message to SQLite (WAL, synchronous=FULL,
             one transaction per message, one writer thread) before 250: the floor
             of a durable queue
gpg-filter   what Lacre/Zeyple users run: one ``gpg --batch --trust-model always
             -e -a -r FPR`` process per message (GNUPGHOME holds the recipient's
             certificate), the result committed to SQLite as above, 250, then
             relayed in plain SMTP to ``--relay`` by 4 delivery tasks (one
             connection per message, like a re-injection into the local MTA) and
             marked delivered. It encrypts only: no signature, no DKIM.

On SIGTERM each writes ``--stats`` (JSON: its own and its children's peak RSS
from getrusage, CPU seconds, messages handled)::

    python -m bench.baselines gpg-filter --listen 127.0.0.1:2601 --db /tmp/q.db \\
        --gnupghome /tmp/gnupg --recipient FPR --relay 127.0.0.1:2600 --stats /tmp/s.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sqlite3
import sys
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.smtp import SMTP

DATA_LIMIT = 128 << 20
RELAY_TASKS = 4  # like securemail's default [delivery] workers


class SqliteQueue:
    """One connection, used by one writer thread: WAL, synchronous=FULL, a transaction per call."""

    def __init__(self, path: str) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self.pool.submit(self._open, path).result()

    def _open(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS queue (id TEXT PRIMARY KEY, received REAL, "
                        "sender TEXT, rcpts TEXT, body BLOB, state TEXT)")

    def _insert(self, mid: str, sender: str, rcpts: list[str], body: bytes) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO queue VALUES (?, ?, ?, ?, ?, 'queued')",
                        (mid, time.time(), sender, json.dumps(rcpts), body))
        self.db.execute("COMMIT")

    def _done(self, mid: str) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("UPDATE queue SET state = 'delivered' WHERE id = ?", (mid,))
        self.db.execute("COMMIT")

    async def insert(self, sender: str, rcpts: list[str], body: bytes) -> str:
        mid = uuid.uuid4().hex
        await asyncio.get_running_loop().run_in_executor(self.pool, self._insert, mid, sender, rcpts, body)
        return mid

    async def done(self, mid: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._done, mid)


class FloorSMTP:
    handled = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.handled += 1
        return "250 2.0.0 OK"


class FloorQueue:
    handled = 0

    def __init__(self, queue: SqliteQueue) -> None:
        self.queue = queue

    async def handle_DATA(self, server, session, envelope) -> str:
        mid = await self.queue.insert(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        self.handled += 1
        return f"250 2.0.0 OK: queued as {mid}"


class GpgFilter:
    handled = 0
    relayed = 0

    def __init__(self, queue: SqliteQueue, gnupghome: str, recipient: str, relay: tuple[str, int]) -> None:
        self.queue, self.recipient, self.relay = queue, recipient, relay
        self.env = {**os.environ, "GNUPGHOME": gnupghome}
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._relay_loop()) for _ in range(RELAY_TASKS)]

    async def handle_DATA(self, server, session, envelope) -> str:
        raw = envelope.original_content
        end = raw.find(b"\r\n\r\n")
        head, body = (raw[:end + 2], raw[end + 4:]) if end >= 0 else (b"", raw)
        proc = await asyncio.create_subprocess_exec(
            "gpg", "--batch", "--trust-model", "always", "-e", "-a", "-r", self.recipient,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env)
        armored, err = await proc.communicate(body)
        if proc.returncode != 0:
            logging.error("gpg failed: %s", err.decode(errors="replace")[:200])
            return "451 4.3.0 encryption failed"
        out = head + b"\r\n" + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        mid = await self.queue.insert(envelope.mail_from, envelope.rcpt_tos, out)
        self.handled += 1
        self.outbox.put_nowait((mid, envelope.mail_from, list(envelope.rcpt_tos), out))
        return f"250 2.0.0 OK: queued as {mid}"

    async def _relay_loop(self) -> None:
        import aiosmtplib
        while True:
            mid, sender, rcpts, body = await self.outbox.get()
            try:
                await aiosmtplib.send(body, sender=sender, recipients=rcpts, hostname=self.relay[0],
                                      port=self.relay[1], start_tls=False, use_tls=False, timeout=60)
                await self.queue.done(mid)
                self.relayed += 1
            except Exception as e:  # noqa: BLE001 - a baseline: report and go on
                logging.error("relay of %s failed: %r", mid, e)


def stats(handler) -> dict:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"handled": handler.handled, "relayed": getattr(handler, "relayed", None),
            "maxrss_self_bytes": me.ru_maxrss * 1024, "maxrss_children_bytes": kids.ru_maxrss * 1024,
            "cpu_self_s": me.ru_utime + me.ru_stime, "cpu_children_s": kids.ru_utime + kids.ru_stime}


async def serve(a) -> dict:
    loop = asyncio.get_running_loop()
    if a.kind == "floor-smtp":
        handler = FloorSMTP()
    elif a.kind == "floor-queue":
        handler = FloorQueue(SqliteQueue(a.db))
    else:
        host, _, port = a.relay.rpartition(":")
        handler = GpgFilter(SqliteQueue(a.db), a.gnupghome, a.recipient, (host, int(port)))
        handler.start()
    host, _, port = a.listen.rpartition(":")
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="baseline.bench", data_size_limit=DATA_LIMIT,
                     decode_data=False, timeout=600, loop=loop), host, int(port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    return stats(handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("floor-smtp", "floor-queue", "gpg-filter"))
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--db", help="SQLite file (floor-queue, gpg-filter)")
    ap.add_argument("--gnupghome", help="gpg-filter: GNUPGHOME holding the recipient's certificate")
    ap.add_argument("--recipient", help="gpg-filter: the fingerprint to encrypt to")
    ap.add_argument("--relay", help="gpg-filter: HOST:PORT of the next hop (plain SMTP)")
    ap.add_argument("--stats", help="write JSON stats here on exit")
    a = ap.parse_args(argv)
    if a.kind != "floor-smtp" and not a.db:
        ap.error("--db is needed")
    if a.kind == "gpg-filter" and not (a.gnupghome and a.recipient and a.relay):
        ap.error("gpg-filter needs --gnupghome, --recipient and --relay")
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
    out = asyncio.run(serve(a))
    if a.stats:
        with open(a.stats, "w") as fh:
            json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
