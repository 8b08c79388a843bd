"""LMTP local delivery (delivery.local = "lmtp") against real servers: a private Dovecot, aiosmtpd's LMTP.

The chain: a member's mail reaches our gateway, which re-encrypts it to each
user's key (as for a Maildir), or for a user without a key (domain-key mode)
decrypts it in memory at delivery, and hands it to Dovecot's LMTP; it is read
back over Dovecot's IMAP. Then the status for each recipient, with DeliveryWorker on
a real SQLite queue: Dovecot refusing an unknown user (over its unix socket),
and an aiosmtpd LMTP server answering 4xx or 5xx for one recipient after the
body, or hanging up between two replies.
"""

from __future__ import annotations

import asyncio
import email
import json
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP

from securemail.audit import AuditLog
from securemail.config import GatewayConfig, Retry
from securemail.db import make_engine
from securemail.delivery.lmtp import deliver_lmtp
from securemail.delivery.worker import DeliveryWorker
from securemail.transform.hops import lmtp_hop
from securemail.delivery.bounces import Bounces
from securemail.queue import Queue
from securemail.schema import create_schema
from tests.support import (OFFICE, Dovecot, Running, audit_records, federation, free_port, office_send, ok,
                           person, queue_rows, require_dovecot, run_cli, wait_for)

pytestmark = pytest.mark.timeout(240)

MARKER = "LMTP-PLAINTEXT-MARKER-51c2"
AGENT = "agent@interieur.gouv.fr"
BRUNO, CLAIRE, DIANE = "bruno@justice.gouv.fr", "claire@justice.gouv.fr", "diane@justice.gouv.fr"
EMILE = "emile@justice.gouv.fr"   # a mailbox and no key: reads in domain-key mode
SENDER, R1, R2 = "alice@a.gov.test", "bob@a.gov.test", "carol@a.gov.test"
BODY = (b"From: Alice <alice@a.gov.test>\r\nTo: bob@a.gov.test, carol@a.gov.test\r\nSubject: minutes\r\n"
        b"Message-ID: <lmtp-1@a.gov.test>\r\n\r\n" + MARKER.encode() + b"\r\n.a line with a leading dot\r\n"
        b".\r\nend\r\n")


def header(raw: bytes, name: str) -> str | None:
    return email.message_from_bytes(raw, policy=default_policy).get(name)


# --- the whole chain: member mail -> gateway (lmtp mode) -> Dovecot -> IMAP ------------------
def test_member_mail_lands_in_each_dovecot_mailbox_and_an_unknown_user_bounces(tmp_path):
    require_dovecot()
    _, homes = federation(tmp_path, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    with Dovecot(tmp_path / "dc", [BRUNO, CLAIRE, EMILE]) as dc:   # diane has a key, no mailbox
        b.tune(local='"lmtp"', lmtp=f'"{dc.lmtp}"')
        people = {r: person(tmp_path, r, b) for r in (BRUNO, CLAIRE, DIANE)}
        person(tmp_path, AGENT, a)  # so that the DSN for diane reaches interieur's Maildir
        msg = (f"From: Agent <{AGENT}>\r\nTo: {BRUNO}, {CLAIRE}, {DIANE}, {EMILE}\r\nSubject: Conseil {MARKER}\r\n"
               f"Message-ID: <lmtp-e2e@interieur.gouv.fr>\r\n\r\nOrdre du jour {MARKER}.\r\n").encode()
        with Running(a, b, cpu_workers=0):
            office_send(a.relay, AGENT, [BRUNO, CLAIRE, DIANE, EMILE], msg)
            got = {r: dc.wait_messages(r, 1) for r in (BRUNO, CLAIRE, EMILE)}
            rows = wait_for(lambda: _settled(b.home), what="justice's deliveries and DSN to settle")
            dsn_files = wait_for(lambda: _files(a.home / "Maildir" / AGENT / "new"), what="the DSN at interieur")
        for r in (BRUNO, CLAIRE):
            [raw] = got[r]
            assert header(raw, "Delivered-To") == r          # Dovecot's LMTP put it there
            status = header(raw, "Securemail-Status")
            assert status is not None and status.startswith("encrypted=yes"), status
            assert header(raw, "Content-Type").startswith("multipart/encrypted")
            assert MARKER.encode() not in raw                # re-encrypted to the user's key, as for a Maildir
            out = json.loads(ok(run_cli(people[r], "read", "--json", str(_save(tmp_path, r, raw)))).stdout)[0]
            assert out["decrypted"] and MARKER in out["body"] and out["subject"] == f"Conseil {MARKER}", out
        [plain] = got[EMILE]   # decrypted at delivery, in memory: the queue held it encrypted
        assert header(plain, "Delivered-To") == EMILE and MARKER.encode() in plain
        assert header(plain, "Subject") == f"Conseil {MARKER}"
        assert header(plain, "Securemail-Status").startswith("encrypted=yes; signature=valid"), plain[:600]
        assert not header(plain, "Content-Type").startswith("multipart/encrypted")
        states = {row["recipient"]: (row["state"], row["last_error"]) for row in rows if row["sender"]}
        assert states[BRUNO][0] == states[CLAIRE][0] == states[EMILE][0] == "delivered"
        assert states[DIANE][0] == "bounced" and states[DIANE][1].startswith("550 5.1.1"), states
        assert [row["recipient"] for row in rows if row["sender"] == ""] == [AGENT] and len(dsn_files) == 1
        assert [len(dc.messages(r)) for r in (BRUNO, CLAIRE, EMILE)] == [1, 1, 1]   # once each, no duplicate
        hops = {rec["fields"]["hop"] for rec in audit_records(b.home, "delivered")}
        assert f"lmtp:{dc.lmtp}" in hops
        assert [rec["fields"]["code"] for rec in audit_records(b.home, "bounced")] == [550]


def _settled(home):
    """The queue once every delivery, the DSN's included (queued after its bounce), is settled."""
    rows = queue_rows(home)
    done = any(r["sender"] == "" for r in rows) and all(r["state"] in ("delivered", "bounced") for r in rows)
    return rows if done else None


def _files(d):
    return sorted(d.iterdir()) if d.exists() else []


def _save(tmp, name, raw):
    path = tmp / f"{name}.eml"
    path.write_bytes(raw)
    return path


# --- the status for each recipient, on a real queue -----------------------------------------
class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path):
    """A SQLite queue with an audit log, a fake clock, and a worker whose DSNs go to a.gov.test's Maildir."""
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    create_schema(engine)
    queue = Queue(engine, clock, audit_log=AuditLog(engine, clock))
    config = GatewayConfig.from_dict({"gateway": {"domains": ["a.gov.test"]}}, tmp_path)
    bounces = Bounces(config, queue, transformer=None, manifest=lambda: None)

    def worker():
        return DeliveryWorker(queue, owner="w1", helo="gw.a.gov.test", maildir_root=tmp_path / "Maildir",
                              lease_seconds=120, timeout=5, clock=clock, bounce_sender=bounces.send,
                              retry=Retry(first=300, cap=3600, give_up_after=86400))

    class Env:
        pass
    e = Env()
    e.clock, e.queue, e.worker, e.tmp = clock, queue, worker, tmp_path
    yield e
    engine.dispose()


def states(queue) -> dict[str, tuple[str, str]]:
    return {r["recipient"]: (r["state"], r["last_error"]) for r in queue.list() if r["sender"]}


def dsns(queue) -> list[tuple[str, bytes]]:
    return [(r["recipient"], queue.show(r["message_id"], with_body=True)["body"])
            for r in queue.list() if r["sender"] == ""]


def run(worker) -> int:
    return asyncio.run(worker.run_once())


def test_dovecot_over_its_unix_socket_delivers_one_recipient_and_refuses_the_unknown(env, tmp_path):
    require_dovecot()
    with Dovecot(tmp_path / "dc", [R1]) as dc:
        hop = lmtp_hop(str(dc.lmtp_socket))
        env.queue.enqueue(SENDER, [(R1, hop), (R2, hop)], BODY)   # one transaction, two RCPT
        assert run(env.worker()) == 2
        [raw] = dc.wait_messages(R1, 1)
    assert states(env.queue) == {R1: ("delivered", ""),
                                 R2: ("bounced", f"550 5.1.1 <{R2}> User doesn't exist: {R2}")}
    assert header(raw, "Delivered-To") == R1 and raw.endswith(BODY.split(b"\r\n\r\n", 1)[1])  # dot-stuffing undone
    [(to, dsn)] = dsns(env.queue)
    assert to == SENDER and f"Final-Recipient: rfc822; {R2}".encode() in dsn
    assert f"Final-Recipient: rfc822; {R1}".encode() not in dsn
    assert b"Diagnostic-Code: smtp; 550 5.1.1" in dsn and MARKER.encode() not in dsn   # headers only
    fields = [r.fields for r in env.queue.audit_log.records() if r.kind in ("delivered", "bounced")]
    assert {f["hop"] for f in fields} == {"lmtp:unix"} and env.queue.audit_log.verify().ok


class Sink:
    """An aiosmtpd LMTP handler: after the body, one reply per recipient, as ``replies`` says (else 250)."""

    def __init__(self) -> None:
        self.replies: dict[str, str] = {}
        self.hang_up_after: int | None = None     # replies sent before the connection is dropped
        self.transactions: list[list[str]] = []   # the recipients of each DATA
        self.delivered: list[tuple[str, bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        rcpts = list(envelope.rcpt_tos)
        self.transactions.append(rcpts)
        out = [self.replies.get(r, f"250 2.0.0 <{r}> saved") for r in rcpts]
        self.delivered += [(r, envelope.original_content) for r, o in zip(rcpts, out) if o.startswith("2")]
        if self.hang_up_after is not None:
            for line in out[:self.hang_up_after]:
                await server.push(line)
            server.transport.abort()
            self.delivered = self.delivered[:self.hang_up_after]
            return out[0]
        return "\r\n".join(out)   # RFC 2033: one reply line per accepted RCPT, in order


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


class LmtpUnixController(UnixSocketController):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def sink():
    s, port = Sink(), free_port()
    c = LmtpController(s, hostname="127.0.0.1", port=port)
    c.start()
    s.hop = lmtp_hop(("127.0.0.1", port))
    yield s
    c.stop()


def test_a_4xx_after_the_body_defers_only_that_recipient_then_it_is_delivered_once(env, sink):
    sink.replies[R2] = "452 4.2.2 <carol@a.gov.test> mailbox full"
    env.queue.enqueue(SENDER, [(R1, sink.hop), (R2, sink.hop)], BODY)
    start = env.clock.t
    run(env.worker())
    assert states(env.queue) == {R1: ("delivered", ""), R2: ("queued", sink.replies[R2])}
    assert [r["next_attempt_at"] for r in env.queue.list() if r["recipient"] == R2] == [start + 300]
    del sink.replies[R2]
    env.clock.t = start + 300
    run(env.worker())
    assert states(env.queue) == {R1: ("delivered", ""), R2: ("delivered", "")}
    assert [sorted(t) for t in sink.transactions] == [[R1, R2], [R2]]  # the retry carries R2 only
    assert sorted(r for r, _ in sink.delivered) == [R1, R2]            # each once: nothing lost, no duplicate
    assert all(data == BODY for _, data in sink.delivered)             # dot-stuffed, then undone by the server
    assert dsns(env.queue) == []


def test_a_5xx_after_the_body_bounces_only_that_recipient(env, sink):
    sink.replies[R1] = "552 5.2.2 <bob@a.gov.test> quota exceeded"
    env.queue.enqueue(SENDER, [(R1, sink.hop), (R2, sink.hop)], BODY)
    run(env.worker())
    assert states(env.queue) == {R1: ("bounced", sink.replies[R1]), R2: ("delivered", "")}
    [(to, dsn)] = dsns(env.queue)
    msg = email.message_from_bytes(dsn, policy=default_policy)
    report = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status").as_bytes()
    assert to == SENDER and b"Final-Recipient: rfc822; bob@a.gov.test" in report
    assert b"Status: 5.2.2" in report and b"Diagnostic-Code: smtp; 552 5.2.2" in report
    assert b"carol@a.gov.test" not in report


def test_replies_read_before_the_server_hangs_up_are_kept(env, sink):
    sink.hang_up_after = 1   # the first recipient's 250, then the connection drops before the second's
    env.queue.enqueue(SENDER, [(R1, sink.hop), (R2, sink.hop)], BODY)
    run(env.worker())
    [[first, second]] = sink.transactions   # in the order of the claims
    assert states(env.queue) == {first: ("delivered", ""), second: ("queued", "connection lost")}
    sink.hang_up_after = None
    env.clock.t += 300
    run(env.worker())
    assert states(env.queue)[second] == ("delivered", "") and sink.transactions[-1] == [second]


def test_an_aiosmtpd_lmtp_server_on_a_unix_socket(env, tmp_path):
    s, path = Sink(), tmp_path / "lmtp.sock"
    c = LmtpUnixController(s, unix_socket=str(path))
    c.start()
    try:
        env.queue.enqueue(SENDER, [(R1, lmtp_hop(str(path)))], BODY)
        run(env.worker())
    finally:
        c.stop()
    assert states(env.queue) == {R1: ("delivered", "")} and s.delivered == [(R1, BODY)]


def test_an_unreachable_lmtp_server_defers(env, tmp_path):
    env.queue.enqueue(SENDER, [(R1, lmtp_hop(str(tmp_path / "no-such.sock")))], BODY)
    env.queue.enqueue(SENDER, [(R2, lmtp_hop(("127.0.0.1", free_port())))], BODY)
    run(env.worker())
    assert states(env.queue) == {R1: ("queued", "connection failed"), R2: ("queued", "connection failed")}


async def _serve(greeting: bytes | None):
    """A raw TCP server that sends ``greeting`` (None: nothing) and then reads forever."""
    async def session(reader, writer):
        if greeting is not None:
            writer.write(greeting)
        try:
            await reader.read()
        except asyncio.CancelledError:  # the test is over
            pass
        writer.close()
    return await asyncio.start_server(session, "127.0.0.1", 0)


@pytest.mark.parametrize("greeting, message", [
    (None, "connection timed out"),                                   # silence is bounded by the timeout
    (b"220 " + b"x" * 9000 + b"\r\n", "next hop's reply did not fit the command; session closed"),
    (b"220-x\r\n" * 200, "next hop's reply did not fit the command; session closed"),  # too many lines
    (b"554 5.3.2 not now\r\n", "LMTP server not ready: 5.3.2 not now"),   # temporary, even a 5xx
])
def test_a_server_that_will_not_talk_properly_defers_every_recipient(greeting, message):
    async def attempt():
        server = await _serve(greeting)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await deliver_lmtp(lmtp_hop(("127.0.0.1", port)), SENDER, [R1, R2], BODY,
                                      helo="gw.a.gov.test", timeout=0.5)
    outcome = asyncio.run(attempt())
    assert [outcome.for_recipient(r).kind for r in (R1, R2)] == ["temporary", "temporary"]
    assert outcome.for_recipient(R1).message == message


# --- gateway init --lmtp -------------------------------------------------------------------
def test_gateway_init_writes_lmtp_delivery(tmp_path):
    home = tmp_path / "gw"
    ports = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    args = ["gateway", "init", "--domain", "office.test", "--listen", ports[0], "--submission", ports[1],
            "--wkd", ports[2]]
    bad = run_cli(home, *args, "--lmtp", "dovecot")
    assert bad.exit_code != 0 and "--lmtp must be HOST:PORT or the absolute path" in bad.output
    assert not (home / "securemail.toml").exists()
    ok(run_cli(home, *args, "--lmtp", "/run/dovecot/lmtp"), "gateway init --lmtp")
    from securemail.home import Home
    config = GatewayConfig.load(Home.open(home))
    assert (config.local_delivery, config.lmtp, config.relay_to) == ("lmtp", "/run/dovecot/lmtp", None)
