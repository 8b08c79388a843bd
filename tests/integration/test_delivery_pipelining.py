"""PIPELINING (RFC 2920) to next hops: MAIL, RCPTs and DATA in one write, replies kept in step.

Two kinds of real server on 127.0.0.1: aiosmtpd (STARTTLS, pinned key) taught
to advertise PIPELINING and to record every chunk it reads, and a small
scripted server for what aiosmtpd never does (354 with nothing accepted, a
refused DATA command, extra or wrong replies, silence).
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from securemail.delivery.smtp import deliver_smtp
from securemail.transform.hops import relay_hop, smtp_hop
from securemail.delivery.pipelining import encode_body
from securemail.delivery.pool import SessionPool
from securemail.delivery.smtp import BAD_REPLY, TIMED_OUT

from tests.support import free_port

from .test_delivery_smtp import BODY, RCPT, SENDER, Sink, tls  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CAROL, DAVE = "carol@b.gov.test", "dave@b.gov.test"


# --- aiosmtpd that advertises PIPELINING and records its reads ------------------------
class PipeSink(Sink):
    def __init__(self, pipelining: bool) -> None:
        super().__init__()
        self.pipelining = pipelining
        self.mail_reply = "250 OK"
        self.reads: list[bytes] = []   # plaintext chunks as the server read them

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        if not self.mail_reply.startswith("250"):
            return self.mail_reply
        return await super().handle_MAIL(server, session, envelope, address, options)


class RecordingSMTP(SMTP):
    def data_received(self, data: bytes) -> None:
        self.event_handler.reads.append(bytes(data))
        super().data_received(data)


class RecordingController(Controller):
    def factory(self):
        return RecordingSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def gateway(tls):
    """gateway(pipelining=True) -> (member hop with STARTTLS and pin, sink)."""
    ctx, pin, _ = tls
    controllers = []

    def start(pipelining: bool = True):
        sink, port = PipeSink(pipelining), free_port()
        c = RecordingController(sink, hostname="127.0.0.1", port=port,
                                server_hostname="gw.b.gov.test", tls_context=ctx,
                                require_starttls=True)
        c.start()
        controllers.append(c)
        return smtp_hop("127.0.0.1", port, pin), sink

    yield start
    for c in controllers:
        c.stop()


def deliver_all(hop, jobs):
    """Deliver (rcpts, body[, before]) jobs in turn through one SessionPool: (outcomes, pool).

    ``before``, if given, is called just before its job (to change what the server answers).
    """
    pool = SessionPool()

    async def main():
        outs = []
        for rcpts, body, *before in jobs:
            for f in before:
                f()
            outs.append(await pool.deliver(hop, SENDER, rcpts, body, helo="gw.a.gov.test",
                                           timeout=10))
        await pool.close()
        return outs

    return asyncio.run(main()), pool


def chunk_with(reads: list[bytes], needle: bytes) -> list[bytes]:
    return [r for r in reads if needle in r]


def test_mail_rcpts_and_data_go_in_one_write_when_advertised(gateway):
    hop, sink = gateway()
    [out], pool = deliver_all(hop, [([RCPT, CAROL, DAVE], BODY)])
    assert out.kind == "delivered" and out.refused == {}
    [chunk] = chunk_with(sink.reads, b"MAIL FROM")
    assert chunk.startswith(b"MAIL FROM:<alice@a.gov.test>") and chunk.endswith(b"\r\nDATA\r\n")
    assert re.findall(rb"RCPT TO:<([^>]*)>", chunk) == [a.encode() for a in (RCPT, CAROL, DAVE)]
    [(mail_from, rcpts, data, over_tls)] = sink.received
    assert (mail_from, rcpts, data, over_tls) == (SENDER, [RCPT, CAROL, DAVE], BODY, True)
    assert chunk_with(sink.reads, b"SECRET-BODY-TEXT") == [BODY + b".\r\n"]  # the body: one write


def test_commands_go_one_at_a_time_without_pipelining(gateway):
    hop, sink = gateway(pipelining=False)
    [out], _ = deliver_all(hop, [([RCPT, CAROL], BODY)])
    assert out.kind == "delivered"
    [chunk] = chunk_with(sink.reads, b"MAIL FROM")
    assert b"RCPT" not in chunk and b"DATA" not in chunk
    assert len(chunk_with(sink.reads, b"RCPT TO")) == 2
    assert sink.received[0][2] == BODY
    assert chunk_with(sink.reads, b"SECRET-BODY-TEXT") == [BODY + b".\r\n"]


def test_mixed_recipients_keep_their_refusals_and_the_session_stays_in_step(gateway):
    hop, sink = gateway()
    sink.rcpt_replies[DAVE] = "550 5.1.1 no such user"
    sink.rcpt_replies[CAROL] = "452 4.2.2 mailbox full"
    second = BODY.replace(b"<m1@", b"<m2@")
    outs, pool = deliver_all(hop, [([RCPT, CAROL, DAVE], BODY), ([CAROL], second),
                                   ([RCPT], second)])
    first = outs[0]
    assert first.kind == "delivered"
    assert {r: (o.kind, o.code) for r, o in first.refused.items()} == {
        CAROL: ("temporary", 452), DAVE: ("permanent", 550)}
    assert first.for_recipient(RCPT).kind == "delivered"
    assert outs[1].kind == "temporary" and outs[1].code == 452   # every recipient refused
    assert outs[2].kind == "delivered"
    assert [(r[1], r[2]) for r in sink.received] == [([RCPT], BODY), ([RCPT], second)]
    assert pool.opened == 1


def test_all_recipients_refused_sends_no_body_and_resets(gateway):
    hop, sink = gateway()
    sink.rcpt_replies[RCPT] = "550 5.1.1 no such user"
    sink.rcpt_replies[CAROL] = "550 5.1.1 no such user"
    outs, pool = deliver_all(hop, [([RCPT, CAROL], BODY), ([DAVE], BODY)])
    assert outs[0].kind == "permanent" and outs[0].code == 550
    assert set(outs[0].refused) == {RCPT, CAROL}
    assert any(r.startswith(b"RSET") for r in sink.reads)   # aiosmtpd said 503 to DATA
    assert outs[1].kind == "delivered" and [r[1] for r in sink.received] == [[DAVE]]
    assert pool.opened == 1 and len(chunk_with(sink.reads, b"SECRET-BODY-TEXT")) == 1


@pytest.mark.parametrize("reply, kind", [("550 5.7.1 sender refused", "permanent"),
                                         ("451 4.3.0 try later", "temporary")])
def test_refused_mail_settles_with_its_reply(gateway, reply, kind):
    hop, sink = gateway()
    sink.mail_reply = reply
    accept = lambda: setattr(sink, "mail_reply", "250 OK")  # noqa: E731
    [out, again], pool = deliver_all(hop, [([RCPT, CAROL], BODY), ([RCPT], BODY, accept)])
    assert (out.kind, out.describe(), out.refused) == (kind, reply, {})
    assert again.kind == "delivered" and pool.opened == 1
    assert [r[1] for r in sink.received] == [[RCPT]]


@pytest.mark.parametrize("reply, kind", [("451 4.3.0 try again later", "temporary"),
                                         ("554 5.7.1 refused by policy", "permanent")])
def test_end_of_data_refusal(gateway, reply, kind):
    hop, sink = gateway()
    sink.data_reply = reply
    sink.rcpt_replies[DAVE] = "550 5.1.1 no such user"
    [out, again], pool = deliver_all(hop, [
        ([RCPT, DAVE], BODY), ([RCPT], BODY, lambda: setattr(sink, "data_reply", "250 2.0.0 OK"))])
    assert (out.kind, out.describe()) == (kind, reply) and set(out.refused) == {DAVE}
    assert again.kind == "delivered" and pool.opened == 1


@pytest.mark.parametrize("body", [
    b".starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n.\r\n",
    b"Subject: x\r\n\r\n.\r\n..\r\n...\r\nend",
    b".",
    b"",
])
def test_dot_stuffing_arrives_as_the_original_bytes(gateway, body):
    hop, sink = gateway()
    [out], _ = deliver_all(hop, [([RCPT], body)])
    assert out.kind == "delivered"
    expected = body if body.endswith(b"\r\n") else body + b"\r\n"  # SMTP ends a message with CRLF
    assert sink.received[0][2] == expected


def test_bare_line_endings_are_normalised(gateway):
    hop, sink = gateway()
    [out], _ = deliver_all(hop, [([RCPT], b"a: 1\nb: 2\r\n\r\n.x\rlast\n.\n")])
    assert out.kind == "delivered"
    assert sink.received[0][2] == b"a: 1\r\nb: 2\r\n\r\n.x\r\nlast\r\n.\r\n"


@pytest.mark.parametrize("body", [
    b"", b".", b"\r\n", b"\n", b"\r", b"a\r\n.b", b".\r\n.\r\n", b"a\n.b\r.c\r\n.d", b"\r\r\n\n.",
    b"x" * 5000 + b"\r\n.y\r\n", b"caf\xc3\xa9\r\n\r\n..\r\n", b"\n.\n", b"a\r\n\r\n",
])
def test_encode_body_matches_aiosmtplib(body):
    want = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) + b".\r\n"
    assert encode_body(body) == want


# --- a scripted server for what aiosmtpd will not do ----------------------------------
class Script:
    """A plain SMTP server on 127.0.0.1 that answers by verb and records every read.

    A reply may be a list (several replies to one command: the session falls out
    of step), None (silence) or "DROP" (close the connection).
    """

    def __init__(self, pipelining: bool = True) -> None:
        self.ehlo = ["250-script.test", "250-PIPELINING", "250 8BITMIME"] if pipelining else \
            ["250-script.test", "250 8BITMIME"]
        self.replies: dict[str, object] = {"MAIL": "250 2.1.0 OK", "RCPT": "250 2.1.5 OK",
                                           "DATA": "354 go ahead", "END": "250 2.0.0 queued",
                                           "RSET": "250 2.0.0 OK", "QUIT": "221 bye"}
        self.once: dict[str, list] = {}     # verb -> replies for its next uses (None: the usual)
        self.rcpt: dict[str, object] = {}
        self.reads: list[bytes] = []
        self.lines: list[bytes] = []       # command lines, in order, across connections
        self.messages: list[bytes] = []    # message data as received (still dot-stuffed)
        self.connections = 0

    def answer(self, verb: str, usual):
        return (self.once[verb].pop(0) or usual) if self.once.get(verb) else usual

    def reply(self, writer, reply) -> bool:
        """Send the reply (several in one write); False when told to drop the connection."""
        lines = [reply] if isinstance(reply, str) else reply or []
        writer.write(b"".join(r.encode() + b"\r\n" for r in lines if r != "DROP"))
        if "DROP" in lines:
            writer.transport.abort()
            return False
        return True

    async def session(self, reader, writer) -> None:
        self.connections += 1
        writer.write(b"220 script.test ESMTP\r\n")
        buf, in_data = b"", False
        while data := await reader.read(65536):
            self.reads.append(data)
            buf += data
            while True:
                if in_data:
                    end = (b"\r\n" + buf).find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.messages.append(buf[:end])
                    buf, in_data = buf[end + 3:], False
                    if not self.reply(writer, self.answer("END", self.replies["END"])):
                        return
                    continue
                if b"\r\n" not in buf:
                    break
                line, buf = buf.split(b"\r\n", 1)
                self.lines.append(line)
                verb = line[:4].decode().upper()
                if verb in ("EHLO", "HELO"):
                    reply = self.ehlo
                elif verb == "RCPT":
                    address = line.decode().split("<")[1].rstrip(">")
                    reply = self.rcpt.get(address, self.replies["RCPT"])
                else:
                    reply = self.replies.get(verb, "502 5.5.2 unknown")
                reply = self.answer(verb, reply)
                if not self.reply(writer, reply):
                    return
                in_data = verb == "DATA" and isinstance(reply, str) and reply.startswith("354")
                if verb == "QUIT":
                    writer.close()
                    return


def scripted(script: Script, jobs, *, pool=None, timeout: float = 10):
    """Run jobs of (rcpts, body) through a SessionPool against ``script``: (outcomes, pool)."""
    pool = pool or SessionPool()

    async def main():
        srv = await asyncio.start_server(script.session, "127.0.0.1", 0)
        hop = relay_hop("127.0.0.1", srv.sockets[0].getsockname()[1])
        async with srv:
            outs = [await pool.deliver(hop, SENDER, rcpts, body, helo="gw.a.gov.test",
                                       timeout=timeout) for rcpts, body in jobs]
            await pool.close()
        return outs

    return asyncio.run(main()), pool


def test_scripted_one_write_and_in_step_across_messages():
    script = Script()
    outs, pool = scripted(script, [([RCPT, CAROL], BODY), ([RCPT], BODY)])
    assert [o.kind for o in outs] == ["delivered", "delivered"] and pool.opened == 1
    pipelined = [r for r in script.reads if r.startswith(b"MAIL")]
    assert pipelined == [b"MAIL FROM:<alice@a.gov.test>\r\nRCPT TO:<bob@b.gov.test>\r\n"
                         b"RCPT TO:<carol@b.gov.test>\r\nDATA\r\n",
                         b"MAIL FROM:<alice@a.gov.test>\r\nRCPT TO:<bob@b.gov.test>\r\nDATA\r\n"]
    assert script.messages == [BODY, BODY]


def test_refused_data_command_keeps_recipient_refusals_and_resets():
    script = Script()
    script.once["DATA"] = ["554 5.5.1 no valid recipients"]
    script.rcpt[DAVE] = "550 5.1.1 no such user"
    outs, pool = scripted(script, [([RCPT, DAVE], BODY), ([RCPT], BODY)])
    assert (outs[0].kind, outs[0].code, set(outs[0].refused)) == ("permanent", 554, {DAVE})
    assert outs[1].kind == "delivered" and pool.opened == 1
    assert script.lines[4:6] == [b"DATA", b"RSET"] and script.messages == [BODY]


@pytest.mark.parametrize("refuse", ["mail", "rcpts"])
def test_354_with_nothing_accepted_gets_an_empty_message_and_the_session_is_dropped(refuse):
    """RFC 2920 3.1: the client sends only "." and never reuses the session."""
    script = Script()
    if refuse == "mail":
        script.replies["MAIL"] = "550 5.7.1 sender refused"
        script.replies["RCPT"] = "503 5.5.1 need MAIL"
    else:
        script.replies["RCPT"] = "550 5.1.1 no such user"
    script.replies["END"] = "554 5.5.1 no valid recipients"
    outs, pool = scripted(script, [([RCPT, CAROL], BODY), ([RCPT], BODY)])
    assert outs[0].kind == "permanent" and outs[0].code == 550
    assert set(outs[0].refused) == (set() if refuse == "mail" else {RCPT, CAROL})
    assert script.messages[0] == b""      # "." alone: the body was never sent
    assert not any(b"SECRET-BODY-TEXT" in r for r in script.reads)
    assert pool.opened == 2 and script.connections == 2


@pytest.mark.parametrize("mail_reply", [["250 OK", "250 OK"],        # one reply too many
                                        "354 not now",              # 3xx cannot answer MAIL
                                        ["250 OK", "garbage\r\n"]])  # malformed
def test_replies_out_of_step_are_never_attributed_and_nothing_is_sent(mail_reply):
    script = Script()
    script.replies["MAIL"] = mail_reply

    async def main():
        srv = await asyncio.start_server(script.session, "127.0.0.1", 0)
        async with srv:
            return await deliver_smtp(relay_hop("127.0.0.1", srv.sockets[0].getsockname()[1]),
                                      SENDER, RCPT, BODY, helo="gw.a.gov.test", timeout=5)

    out = asyncio.run(main())
    assert out.kind == "temporary" and out.code in (None, -1)
    assert script.messages == [] and not any(b"SECRET-BODY-TEXT" in r for r in script.reads)


def test_bytes_left_after_the_last_reply_close_the_session():
    script = Script()
    script.once["END"] = [["250 2.0.0 queued", "250 2.0.0 and again"]]
    outs, pool = scripted(script, [([RCPT], BODY), ([RCPT], BODY)])
    assert [o.kind for o in outs] == ["delivered", "delivered"]
    assert outs[0].message == "2.0.0 queued"
    assert pool.opened == 2 and script.connections == 2


def test_2xx_to_data_is_out_of_step_not_delivered():
    script = Script()
    script.replies["DATA"] = "250 OK"
    outs, pool = scripted(script, [([RCPT], BODY)])
    assert (outs[0].kind, outs[0].message) == ("temporary", BAD_REPLY)
    assert script.messages == [] and b"QUIT" not in script.lines   # closed, never pooled


def test_421_mid_pipeline_defers_and_closes():
    script = Script()
    script.rcpt[CAROL] = ["421 4.3.2 shutting down", "DROP"]
    outs, pool = scripted(script, [([RCPT, CAROL], BODY)])
    assert (outs[0].kind, outs[0].code) == ("temporary", 421)
    assert script.messages == [] and b"QUIT" not in script.lines


def test_silence_times_out_and_closes():
    script = Script()
    script.replies["DATA"] = None
    outs, _ = scripted(script, [([RCPT], BODY)], timeout=0.5)
    assert (outs[0].kind, outs[0].message) == ("temporary", TIMED_OUT)
    assert script.messages == [] and b"QUIT" not in script.lines


def test_reused_session_dead_before_data_is_retried_fresh_once():
    script = Script()
    script.once["MAIL"] = [None, "DROP"]   # the second MAIL (on the pooled session) kills it
    outs, pool = scripted(script, [([RCPT], BODY), ([RCPT], BODY)])
    assert [o.kind for o in outs] == ["delivered", "delivered"]
    assert pool.opened == 2 and script.connections == 2 and script.messages == [BODY, BODY]


def test_drop_after_body_on_a_reused_session_is_not_resent():
    script = Script()
    pool = SessionPool()

    async def main():
        srv = await asyncio.start_server(script.session, "127.0.0.1", 0)
        hop = relay_hop("127.0.0.1", srv.sockets[0].getsockname()[1])
        async with srv:
            first = await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=5)
            script.replies["END"] = "DROP"
            second = await pool.deliver(hop, SENDER, RCPT, BODY, helo="gw", timeout=5)
            await pool.close()
        return first, second

    first, second = asyncio.run(main())
    assert first.kind == "delivered" and second.kind == "temporary"
    assert pool.opened == 1 and len(script.messages) == 2   # the body went once per message


def test_non_pipelining_server_gets_one_command_per_write():
    script = Script(pipelining=False)
    outs, _ = scripted(script, [([RCPT, CAROL], BODY)])
    assert outs[0].kind == "delivered"
    assert [r for r in script.reads if r.startswith((b"MAIL", b"RCPT", b"DATA"))] == [
        b"MAIL FROM:<alice@a.gov.test>\r\n", b"RCPT TO:<bob@b.gov.test>\r\n",
        b"RCPT TO:<carol@b.gov.test>\r\n", b"DATA\r\n"]
    assert script.messages == [BODY]


@pytest.mark.parametrize("ending", [b"\r\n", b""])
def test_a_body_bigger_than_one_write_arrives_byte_for_byte(gateway, ending):
    import os
    hop, sink = gateway()
    lines = [b"." + os.urandom(30).hex().encode() if i % 7 == 0 else os.urandom(30).hex().encode()
             for i in range(80_000)]  # ~4.9 MB over TLS, written in 1 MiB pieces; dots to stuff
    body = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + ending
    [out], _ = deliver_all(hop, [([RCPT], body)])
    assert out.kind == "delivered"
    assert sink.received[0][2] == (body if ending else body + b"\r\n")
