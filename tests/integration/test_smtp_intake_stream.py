"""DATA intake read in large runs: the end marker at any packet boundary, pipelining, limits.

Against a real server on 127.0.0.1 (the fixtures of test_smtp_adapter.py),
and, for every way a stream can be cut, against ``GatewaySMTP._read_data``
fed through an asyncio.StreamReader exactly as the transport feeds it.
"""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import pytest

from securemail.config import Limits
from securemail.smtp import replies
from securemail.smtp.server import GatewaySMTP

from .test_smtp_adapter import GOOD, OTHER, Raw, close_raw_clients, loop, serve  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)
MESSAGE = b"Subject: x\r\n\r\nbody\r\n"


def send_in_parts(raw: Raw, *parts: bytes) -> None:
    """Each part in its own write, far enough apart to arrive in its own read."""
    for part in parts:
        raw.sock.sendall(part)
        time.sleep(0.03)


# --- PIPELINING (RFC 2920) ------------------------------------------------------------
def test_ehlo_advertises_pipelining(serve):
    port, _ = serve()
    raw = Raw(port)
    raw.reply()
    lines = raw.cmd(b"EHLO c").splitlines()
    assert "250-PIPELINING" in lines and lines[-1] == "250 HELP"
    assert raw.cmd(b"HELP") != "250 HELP"  # only EHLO ends with that line


def test_pipelined_commands_get_one_reply_each_and_never_become_content(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c")
    raw.sock.sendall(b"MAIL FROM:" + GOOD + b"\r\nRCPT TO:" + OTHER + b"\r\nDATA\r\n")
    assert [raw.reply() for _ in range(3)] == [replies.MAIL_OK, replies.RCPT_OK, replies.START_DATA]
    # the end of data and the next transaction's commands in one write
    raw.sock.sendall(b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:" + GOOD
                     + b"\r\nRCPT TO:<carol@gov.test>\r\nDATA\r\n")
    assert [raw.reply() for _ in range(4)] == [replies.OK, replies.MAIL_OK, replies.RCPT_OK,
                                               replies.START_DATA]
    raw.sock.sendall(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
    assert [raw.reply() for _ in range(2)] == [replies.OK, replies.BYE]
    assert [(e.rcpt_tos, e.data) for e in rec.stored] == [
        (("bob@gov.test",), b"Subject: one\r\n\r\nfirst\r\n"),
        (("carol@gov.test",), b"Subject: two\r\n\r\nsecond\r\n")]


def test_a_command_after_the_end_marker_in_the_same_write_is_a_command(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    raw.sock.sendall(MESSAGE + b".\r\nRSET\r\nNOOP\r\n")
    assert [raw.reply() for _ in range(3)] == [replies.OK, replies.NOOP_OK, replies.NOOP_OK]
    assert rec.stored[0].data == MESSAGE


# --- the end marker at every packet boundary ---------------------------------------------
STREAM = MESSAGE + b".\r\nNOOP\r\n"


@pytest.mark.parametrize("cut", range(len(MESSAGE) - 4, len(MESSAGE) + 5))
def test_end_marker_split_across_writes(serve, cut):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    send_in_parts(raw, STREAM[:cut], STREAM[cut:])
    assert raw.reply() == replies.OK
    assert raw.reply() == replies.NOOP_OK
    assert rec.stored[0].data == MESSAGE


def test_empty_message_and_lone_dot_split_after_each_octet(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    send_in_parts(raw, b".", b"\r", b"\n")
    assert raw.reply() == replies.OK
    assert raw.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK
    assert raw.cmd(b"RCPT TO:" + OTHER) == replies.RCPT_OK
    assert raw.cmd(b"DATA") == replies.START_DATA
    send_in_parts(raw, b"\r", b"\n", b".", b"\r", b"\n")
    assert raw.reply() == replies.OK
    assert [e.data for e in rec.stored] == [b"", b"\r\n"]


# --- dot-stuffing -----------------------------------------------------------------------
def test_dot_unstuffing_everywhere_a_line_can_start(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    wire = [b"..first\r\n", b"Subject: x\r\n\r\n..\r\n...\r\n.x\r\n", b"..split", b" line\r\n.",
            b".after a cut\r\nlast.\r\n", b".\r\n"]
    send_in_parts(raw, *wire)
    assert raw.reply() == replies.OK
    assert rec.stored[0].data == (b".first\r\nSubject: x\r\n\r\n.\r\n..\r\nx\r\n.split line\r\n"
                                  b".after a cut\r\nlast.\r\n")


# --- line length: 1000 octets with CRLF, after unstuffing ----------------------------------
BULK = b"".join(b"%075d\r\n" % i for i in range(5000))  # 385 KB: more than one read


@pytest.mark.parametrize("where", ["first", "after-bulk", "last"])
@pytest.mark.parametrize("line, ok", [
    (b"a" * 998, True),                 # 1000 octets with CRLF
    (b".." + b"a" * 997, True),         # dot-stuffed: 1001 on the wire, 1000 after
    (b"a" * 999, False),                # 1001 octets
    (b"." + b"a" * 999, False),         # stuffed, still 1001 after unstuffing
], ids=["1000", "stuffed-1000", "1001", "stuffed-1001"])
def test_data_line_of_1000_and_1001_octets(serve, where, line, ok):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    before = {"first": b"", "after-bulk": BULK, "last": b"Subject: x\r\n\r\n" + BULK}[where]
    after = b"" if where == "last" else b"tail\r\n"
    send_in_parts(raw, before + line[:500], line[500:] + b"\r\n" + after + b".\r\n")
    if ok:
        assert raw.reply() == replies.OK
        assert rec.stored[0].data == before + line.replace(b"..", b".", 1) + b"\r\n" + after
    else:
        assert raw.reply() == replies.DATA_LINE_TOO_LONG
        assert rec.stored == []
        assert raw.cmd(b"NOOP") == replies.NOOP_OK


def test_a_line_of_megabytes_is_refused(serve):
    port, rec = serve(limits=Limits(message_size=4 << 20))
    raw = Raw(port)
    raw.start_data()
    for _ in range(8):
        raw.sock.sendall(b"x" * (256 << 10))
    raw.sock.sendall(b"\r\n.\r\n")
    assert raw.reply() == replies.DATA_LINE_TOO_LONG
    assert rec.stored == [] and raw.cmd(b"NOOP") == replies.NOOP_OK


# --- size ----------------------------------------------------------------------------------
def test_size_limit_is_exact(serve):
    port, rec = serve(limits=Limits(message_size=1000))
    raw = Raw(port)
    raw.start_data()
    exact = (b"x" * 98 + b"\r\n") * 10  # 1000 octets
    assert raw.cmd(exact + b".") == replies.OK
    assert raw.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK
    assert raw.cmd(b"RCPT TO:" + OTHER) == replies.RCPT_OK
    assert raw.cmd(b"DATA") == replies.START_DATA
    assert raw.cmd(b"." + exact + b".") == replies.TOO_BIG  # counted on the wire, as before
    assert [e.data for e in rec.stored] == [exact]


def test_size_exceeded_then_more_data_then_the_end_marker(serve):
    port, rec = serve(limits=Limits(message_size=10_000))
    raw = Raw(port)
    raw.start_data()
    send_in_parts(raw, b"Subject: big\r\n\r\n" + b"y" * 70 + b"\r\n", (b"z" * 98 + b"\r\n") * 150,
                  (b"w" * 50 + b"\r\n") * 1000, b"the end\r\n.", b"\r\nNOOP\r\n")
    assert raw.reply() == replies.TOO_BIG
    assert raw.reply() == replies.NOOP_OK  # what followed the marker is a command again
    assert rec.stored == []
    assert raw.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK


def test_too_big_wins_over_a_long_line(serve):
    port, rec = serve(limits=Limits(message_size=5000))
    raw = Raw(port)
    raw.start_data()
    assert raw.cmd(b"a" * 2000 + b"\r\n" + (b"b" * 98 + b"\r\n") * 60 + b".") == replies.TOO_BIG
    assert rec.stored == []


# --- every cut of a stream, in-process --------------------------------------------------------
def reference(stream: bytes, max_size: int) -> tuple[bytes, str | None, bytes]:
    """(content, problem, rest) as the line-by-line reader before it computed them."""
    at = (b"\r\n" + stream).find(b"\r\n.\r\n")
    wire, rest = stream[:at], stream[at + 3:]
    lines = [line[1:] if line[:1] == b"." else line for line in wire.split(b"\r\n")[:-1]]
    if len(wire) > max_size:
        return b"", replies.TOO_BIG, rest
    if any(len(line) > 998 for line in lines):
        return b"", replies.DATA_LINE_TOO_LONG, rest
    return b"".join(line + b"\r\n" for line in lines), None, rest


async def read_fed(stream: bytes, cuts: list[int], max_size: int) -> tuple[bytes, str | None, bytes]:
    """``_read_data`` on a StreamReader fed ``stream`` cut at ``cuts``, with aiosmtpd's limit."""
    reader = asyncio.StreamReader(limit=GatewaySMTP.line_length_limit)
    session = SimpleNamespace(_data_reader=reader, limits=Limits(message_size=max_size))

    async def feed() -> None:
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            reader.feed_data(stream[a:b])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeding = asyncio.ensure_future(feed())
    content, problem = await GatewaySMTP._read_data(session)  # type: ignore[arg-type]
    await feeding
    return content, problem, await reader.read()


def random_stream(rng: random.Random) -> bytes:
    pieces = [b".", b"..", b"\r\n", b"a", b"b.", b"\r\n.\r\n", b"x" * rng.choice([1, 500, 997, 998, 999]),
              b"\r\n..\r\n", b"\r\n.x"]
    body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
    return body + b"\r\n.\r\n" + rng.choice([b"", b"QUIT\r\n", b".\r\nMAIL FROM:<a@b>\r\n"])


def test_every_cut_of_small_streams_gives_what_the_line_reader_gave():
    for stream in [b".\r\n", b"\r\n.\r\n", b"..\r\n.\r\nQUIT\r\n", b"a\r\n..\r\n.\r\n.\r\n",
                   b".\r\n.\r\n", b"x\r\n.y\r\n.\r\n", MESSAGE + b".\r\nNOOP\r\n",
                   b"a" * 998 + b"\r\n.\r\n", b".." + b"a" * 997 + b"\r\n.\r\n", b"a" * 999 + b"\r\n.\r\n",
                   b"b\r\n." + b"a" * 998 + b"\r\n.\r\n"]:
        want = reference(stream, 10_000)
        for cut in range(1, len(stream)):
            assert asyncio.run(read_fed(stream, [cut], 10_000)) == want, (stream, cut)
        assert asyncio.run(read_fed(stream, list(range(1, len(stream))), 10_000)) == want


def test_random_streams_cut_at_random_give_what_the_line_reader_gave():
    rng = random.Random(2920)
    for _ in range(400):
        stream = random_stream(rng)
        max_size = rng.choice([10, 1000, 5000, 1 << 20])
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        got = asyncio.run(read_fed(stream, cuts, max_size))
        want = reference(stream, max_size)
        assert got == want, (stream, cuts, max_size)


def test_lines_ending_in_a_dot_are_read_in_one_run_not_one_by_one():
    body = b"a.\r\n" * 25_000 + b"..\r\n" * 25_000  # 200 KB: a line-by-line reader made 50,000 reads
    reads = 0

    async def run() -> tuple[bytes, str | None, bytes]:
        reader = asyncio.StreamReader(limit=GatewaySMTP.line_length_limit)
        reader.feed_data(body + b".\r\nQUIT\r\n")
        reader.feed_eof()
        readuntil = reader.readuntil

        async def counted(separator: bytes) -> bytes:
            nonlocal reads
            reads += 1
            return await readuntil(separator)

        reader.readuntil = counted  # type: ignore[method-assign]
        session = SimpleNamespace(_data_reader=reader, limits=Limits())
        content, problem = await GatewaySMTP._read_data(session)  # type: ignore[arg-type]
        return content, problem, await reader.read()

    assert asyncio.run(run()) == (b"a.\r\n" * 25_000 + b".\r\n" * 25_000, None, b"QUIT\r\n")
    assert reads <= 4
