"""Load generator: our own asyncio SMTP client sending N fixed-size messages over C connections.

Each connection says EHLO once, then loops MAIL, RCPT, DATA, the message, and
waits for the final reply before the next one (no pipelining), like an office
MTA's smtp client with connection reuse. Every message carries a unique
``Message-ID: <ID@domain>`` so a sink can report when it arrived.

Time-to-250 runs from the first byte of MAIL FROM to the reply after the
final dot. With ``rate`` (messages per second) the starts follow a fixed
schedule (open loop): a message's latency then counts from its scheduled
time, so waiting for a free connection is included (no coordinated omission).

Usable on its own::

    python -m bench.loadgen --port 2525 -n 1000 -c 10 --size 4K --source 127.0.0.3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

WRAP = 76  # body line length before CRLF (base64-like text, no dot-stuffing needed)


@dataclass
class Sample:
    mid: str
    t_sched: float      # scheduled start (= t_start without a rate), time.time()
    t_start: float      # MAIL FROM written
    t_done: float       # final reply read (or the failure noticed)
    code: int           # final reply code; 0 for a network error
    reply: str = ""     # the reply text when it was not 250

    @property
    def ok(self) -> bool:
        return self.code == 250


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    t_begin: float = 0.0
    t_end: float = 0.0

    @property
    def acked(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def failures(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            if not s.ok:
                key = f"{s.code} {s.reply[:80]}".strip()
                out[key] = out.get(key, 0) + 1
        return out


def make_body(size: int) -> bytes:
    """About ``size`` bytes of CRLF-terminated 76-character lines of random base64 text (no leading dot)."""
    raw = base64.b64encode(os.urandom(size))
    lines = [raw[i:i + WRAP] for i in range(0, max(1, size // (WRAP + 2)) * WRAP, WRAP)]
    body = b"\r\n".join(lines) + b"\r\n"
    rest = size - len(body)
    return body + (raw[:rest - 2] + b"\r\n" if rest > 2 else b"")


@dataclass(frozen=True)
class MessageSpec:
    """What every message looks like; only the Message-ID changes."""
    mail_from: str
    rcpt: str
    size: int                           # total bytes of header + body, approximately exact
    domain: str = "bench.example"
    subject: str = "bench"
    body: bytes = b""

    def with_body(self) -> "MessageSpec":
        head = len(self.header("x" * 40))
        body = make_body(max(64, self.size - head))
        return MessageSpec(self.mail_from, self.rcpt, self.size, self.domain, self.subject, body)

    def header(self, mid: str) -> bytes:
        return (f"From: Bench Sender <{self.mail_from}>\r\nTo: <{self.rcpt}>\r\n"
                f"Subject: {self.subject}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
                f"Message-ID: <{mid}@{self.domain}>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()


class SMTPError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line.decode("latin-1").rstrip("\r\n"))
        if line[3:4] != b"-":
            break
    return int(lines[-1][:3]), " ".join(x[4:] for x in lines)


async def _expect(reader, writer, line: bytes | None, ok: tuple[int, ...]) -> None:
    if line is not None:
        writer.write(line)
    code, text = await _reply(reader)
    if code not in ok:
        raise SMTPError(code, text)


class Connection:
    """One client connection (plain SMTP; the office MTA inside the office network)."""

    def __init__(self, host: str, port: int, source: str | None, timeout: float) -> None:
        self.host, self.port, self.source, self.timeout = host, port, source, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0) if self.source else None,
            limit=1 << 16), self.timeout)
        await asyncio.wait_for(_expect(self.reader, self.writer, None, (220,)), self.timeout)
        await asyncio.wait_for(_expect(self.reader, self.writer, b"EHLO mta.office.bench\r\n", (250,)),
                               self.timeout)

    async def send(self, spec: MessageSpec, mid: str) -> tuple[int, str]:
        r, w = self.reader, self.writer
        w.write(b"MAIL FROM:<%s>\r\n" % spec.mail_from.encode())
        await _expect(r, w, None, (250,))
        await _expect(r, w, b"RCPT TO:<%s>\r\n" % spec.rcpt.encode(), (250, 251))
        await _expect(r, w, b"DATA\r\n", (354,))
        w.write(spec.header(mid))
        w.write(spec.body)
        w.write(b".\r\n")
        await w.drain()
        return await _reply(r)

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(_reply(self.reader), 2)
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass
        self.writer = None


async def run_load(targets: list[tuple[str, int]], spec: MessageSpec, n: int, concurrency: int, *,
                   run_id: str, source: str | None = "127.0.0.3", rate: float | None = None,
                   timeout: float = 300.0, first_index: int = 0) -> LoadResult:
    """Send ``n`` messages over ``concurrency`` connections spread round-robin over ``targets``."""
    if not spec.body:
        spec = spec.with_body()
    counter = itertools.count()
    conns = [Connection(*targets[k % len(targets)], source, timeout) for k in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))  # connecting is not part of any message's time
    res = LoadResult()
    res.t_begin = time.time()
    t0 = time.monotonic()
    mono_to_wall = res.t_begin - t0

    async def worker(k: int) -> None:
        host, port = targets[k % len(targets)]
        conn: Connection | None = conns[k]
        while (i := next(counter)) < n:
            sched = t0 + i / rate if rate else None
            if sched is not None and sched > time.monotonic():
                await asyncio.sleep(sched - time.monotonic())
            mid = f"{run_id}.{first_index + i}"
            t_start = t_sched = time.time()
            try:
                if conn is None:  # a reconnect after a failure is not timed
                    conn = Connection(host, port, source, timeout)
                    await conn.open()
                    t_start = t_sched = time.time()
                if sched is not None:
                    t_sched = sched + mono_to_wall
                code, text = await asyncio.wait_for(conn.send(spec, mid), timeout)
            except SMTPError as e:
                code, text = e.code, e.text
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                code, text = 0, f"{type(e).__name__}: {e}"
            res.samples.append(Sample(mid, t_sched, t_start, time.time(), code,
                                      "" if code == 250 else text))
            if code != 250 and conn is not None:  # the session state is unknown: start afresh
                await conn.close()
                conn = None
        if conn is not None:
            await conn.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    res.t_end = time.time()
    return res


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def main(argv: list[str] | None = None) -> int:
    from bench.crypto import parse_size
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("--size", default="4K")
    ap.add_argument("--rate", type=float, default=None, help="messages/s (open loop); default: as fast as possible")
    ap.add_argument("--source", default="127.0.0.3", help="local address to send from ('' = any)")
    ap.add_argument("--from", dest="mail_from", default="alice@interieur.gouv.fr")
    ap.add_argument("--to", default="bob@justice.gouv.fr")
    a = ap.parse_args(argv)
    spec = MessageSpec(a.mail_from, a.to, parse_size(a.size), a.mail_from.rpartition("@")[2])
    res = asyncio.run(run_load([(a.host, a.port)], spec, a.n, a.c, run_id=f"lg{os.getpid()}",
                               source=a.source or None, rate=a.rate))
    ok = res.acked
    lat = [(s.t_done - s.t_sched) * 1e3 for s in ok]
    span = max(s.t_done for s in ok) - res.t_begin if ok else 0
    print(f"{len(ok)}/{a.n} acknowledged in {span:.2f} s = {len(ok) / span if span else 0:.1f} msg/s; "
          f"time-to-250 p50 {percentile(lat, 50) or 0:.1f} ms p99 {percentile(lat, 99) or 0:.1f} ms "
          f"(mean {statistics.fmean(lat) if lat else 0:.1f})")
    for reason, count in res.failures().items():
        print(f"  {count} x {reason}")
    return 0 if len(ok) == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
