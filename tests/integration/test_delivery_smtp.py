"""Delivery against real servers: aiosmtpd on 127.0.0.1 (STARTTLS, pinned key) and a real SQLite queue.

Each test enqueues into a fresh SQLite queue, runs ``DeliveryWorker.run_once``
with the real ``deliver_smtp`` and asserts what the sink received and what the
queue row says afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import ipaddress
import ssl
import stat
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securemail.audit import AuditLog
from securemail.config import GatewayConfig, Retry
from securemail.crypto.tlspin import spki_sha256
from securemail.db import make_engine
from securemail.delivery.smtp import deliver_smtp
from securemail.delivery.worker import DeliveryWorker
from securemail.transform.hops import maildir_hop, relay_hop, smtp_hop
from securemail.delivery.bounces import Bounces
from securemail.schema import create_schema
from securemail.queue import Queue
from tests.support import free_port

pytestmark = pytest.mark.timeout(60)

SENDER, RCPT = "alice@a.gov.test", "bob@b.gov.test"
BODY = (b"From: Alice <alice@a.gov.test>\r\nTo: bob@b.gov.test\r\nSubject: quarterly\r\n"
        b"Message-ID: <m1@a.gov.test>\r\n\r\nSECRET-BODY-TEXT\r\n")


# --- fixtures -----------------------------------------------------------------------
def make_cert(directory, name: str = "gw.b.gov.test"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / f"{name}.pem").write_bytes(pem)
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
    return ctx, spki_sha256(pem)


class Sink:
    """An aiosmtpd handler that records what it is given and answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes, bool]] = []
        self.mail_commands = 0
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = "250 2.0.0 OK"
        self.drop_after_data = False

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.mail_commands += 1
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.rcpt_replies.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.drop_after_data:
            server.transport.abort()
            return "250 2.0.0 OK"
        if self.data_reply.startswith("250"):
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content, session.ssl is not None))
        return self.data_reply


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ctx, pin = make_cert(d)
    _, other_pin = make_cert(d, "impostor.test")
    return ctx, pin, other_pin


@pytest.fixture
def server():
    """server(tls_context=None, require_starttls=False) -> (port, sink)."""
    controllers = []

    def start(**kwargs):
        sink, port = Sink(), free_port()
        c = Controller(sink, hostname="127.0.0.1", port=port, server_hostname="gw.b.gov.test",
                       **kwargs)
        c.start()
        controllers.append(c)
        return port, sink

    yield start
    for c in controllers:
        c.stop()


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path):
    """A fresh SQLite queue with an audit log, a fake clock and a worker factory.

    DSNs go through the gateway's own ``Bounces`` (as ``build_delivery`` wires it) for a gateway
    serving a.gov.test: a DSN to SENDER is queued for that domain's Maildir.
    """
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    create_schema(engine)
    queue = Queue(engine, clock, audit_log=AuditLog(engine, clock))
    config = GatewayConfig.from_dict({"gateway": {"domains": ["a.gov.test"], "hostname": "gw.a.gov.test"}},
                                     tmp_path)

    def worker(owner="w1", q=None, **kw):
        q = q or queue
        kw.setdefault("retry", Retry(first=300, cap=3600, give_up_after=86400))
        bounces = Bounces(config, q, transformer=None, manifest=lambda: None)  # local DSNs only
        return DeliveryWorker(q, owner=owner, helo="gw.a.gov.test", maildir_root=tmp_path / "Maildir",
                              lease_seconds=120, timeout=5, clock=clock, bounce_sender=bounces.send, **kw)

    class Env:
        pass
    e = Env()
    e.clock, e.engine, e.queue, e.worker, e.tmp = clock, engine, queue, worker, tmp_path
    yield e
    engine.dispose()


def run(worker) -> int:
    return asyncio.run(worker.run_once())


def only(queue, state=None):
    rows = [r for r in queue.list() if r["sender"] != ""]
    assert len(rows) == 1
    if state:
        assert rows[0]["state"] == state, rows[0]
    return rows[0]


def dsns(queue):
    """The queued DSNs: (recipient, parsed message) for rows with the null sender."""
    out = []
    for row in queue.list():
        if row["sender"] == "":
            msg = queue.show(row["message_id"], with_body=True)
            out.append((row["recipient"], msg["body"]))
    return out


# --- member gateway: STARTTLS and the pin ---------------------------------------------
def test_delivers_over_starttls_to_pinned_gateway(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    assert run(env.worker()) == 1
    [(mail_from, rcpts, data, over_tls)] = sink.received
    assert (mail_from, rcpts, over_tls) == (SENDER, [RCPT], True)
    assert data.replace(b"\r\n", b"\n") == BODY.replace(b"\r\n", b"\n")
    assert only(env.queue, "delivered")["last_error"] == ""
    kinds = [r.kind for r in env.queue.audit_log.records()]
    assert kinds.count("delivered") == 1 and env.queue.audit_log.verify().ok
    fields = env.queue.audit_log.records()[-1].fields
    assert fields["rcpt_domain"] == "b.gov.test" and RCPT not in str(fields)


def test_recipients_of_one_message_share_one_transaction(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    hop = smtp_hop("127.0.0.1", port, pin)
    sink.rcpt_replies["dave@b.gov.test"] = "550 5.1.1 no such user"
    env.queue.enqueue(SENDER, [(RCPT, hop), ("carol@b.gov.test", hop), ("dave@b.gov.test", hop)], BODY)
    assert run(env.worker()) == 3
    assert sink.mail_commands == 1
    assert [sorted(r[1]) for r in sink.received] == [[RCPT, "carol@b.gov.test"]]
    states = {r["recipient"]: r["state"] for r in env.queue.list() if r["sender"]}
    assert states == {RCPT: "delivered", "carol@b.gov.test": "delivered", "dave@b.gov.test": "bounced"}
    [(to, dsn)] = dsns(env.queue)
    assert to == SENDER and b"Final-Recipient: rfc822; dave@b.gov.test" in dsn
    assert b"Final-Recipient: rfc822; bob@" not in dsn


def test_wrong_pin_defers_and_sends_nothing(env, server, tls):
    ctx, _, other_pin = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, other_pin))], BODY)
    run(env.worker())
    row = only(env.queue, "queued")
    assert "pinned key" in row["last_error"]
    assert row["next_attempt_at"] == env.clock.t + 300
    assert sink.received == [] and sink.mail_commands == 0
    assert dsns(env.queue) == []


def test_gateway_without_starttls_is_never_sent_in_clear(env, server, tls):
    _, pin, _ = tls
    port, sink = server()  # no TLS offered at all
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    run(env.worker())
    assert "STARTTLS" in only(env.queue, "queued")["last_error"]
    assert sink.received == [] and sink.mail_commands == 0


@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "452 4.2.2 mailbox full"])
def test_4xx_defers_per_schedule(env, server, tls, reply):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    sink.data_reply = reply
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    start = env.clock.t
    run(env.worker())
    row = only(env.queue, "queued")
    assert row["last_error"] == reply and row["next_attempt_at"] == start + 300
    env.clock.t = start + 300  # second failure: the delay doubles
    run(env.worker())
    assert only(env.queue, "queued")["next_attempt_at"] == start + 300 + 600
    assert dsns(env.queue) == []


def test_550_bounces_with_dsn_of_headers_only(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    sink.data_reply = "550 5.7.1 refused by policy"
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    run(env.worker())
    assert only(env.queue, "bounced")["last_error"] == "550 5.7.1 refused by policy"
    [(to, raw)] = dsns(env.queue)
    assert to == SENDER
    dsn_row = next(r for r in env.queue.list() if r["sender"] == "")
    assert dsn_row["next_hop"] == str(maildir_hop(SENDER))
    msg = email.message_from_bytes(raw, policy=default_policy)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@gw.a.gov.test"
    human, status, headers = msg.get_payload()
    assert [p.get_content_type() for p in (human, status, headers)] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"Status: 5.7.1" in raw and b"Diagnostic-Code: smtp; 550 5.7.1 refused by policy" in raw
    assert b"Subject: quarterly" in raw and b"SECRET-BODY-TEXT" not in raw
    assert b"In-Reply-To: <m1@a.gov.test>" in raw


def test_null_sender_bounce_makes_no_dsn(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    sink.data_reply = "550 5.1.1 no such user"
    env.queue.enqueue("", [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    run(env.worker())
    [row] = env.queue.list()
    assert row["state"] == "bounced" and len(env.queue.list()) == 1


def test_server_down_defers(env, tls):
    _, pin, _ = tls
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", free_port(), pin))], BODY)
    run(env.worker())
    row = only(env.queue, "queued")
    assert row["last_error"] == "connection failed" and row["next_attempt_at"] == env.clock.t + 300


def test_drop_after_data_is_temporary(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    sink.drop_after_data = True
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    run(env.worker())
    assert only(env.queue, "queued")["last_error"] == "connection lost"


def test_gives_up_after_give_up_after_with_dsn(env, tls):
    _, pin, _ = tls
    hop = smtp_hop("127.0.0.1", free_port(), pin)
    env.queue.enqueue(SENDER, [(RCPT, hop)], BODY)
    worker = env.worker(retry=Retry(first=300, cap=3600, give_up_after=1000))
    run(worker)
    assert only(env.queue, "queued")["next_attempt_at"] == env.clock.t + 300
    env.clock.t += 1000
    run(worker)
    row = only(env.queue, "bounced")
    assert row["attempts"] == 2 and "gave up after 2 attempts" in row["last_error"]
    [(to, raw)] = dsns(env.queue)
    assert to == SENDER and b"Status: 4.4.7" in raw and b"Action: failed" in raw
    assert b"Diagnostic-Code" not in raw  # no server answered


def test_unauthenticated_5xx_before_tls_does_not_bounce(env, tls):
    """An on-path attacker's 554 banner must not bounce mail to a pinned gateway."""
    _, pin, _ = tls
    port = free_port()

    async def scenario():
        async def banner(reader, writer):
            writer.write(b"554 5.7.1 go away\r\n")
            await writer.drain()
            writer.close()
        srv = await asyncio.start_server(banner, "127.0.0.1", port)
        async with srv:
            return await deliver_smtp(smtp_hop("127.0.0.1", port, pin), SENDER, RCPT, BODY,
                                      helo="gw.a.gov.test", timeout=5)

    outcome = asyncio.run(scenario())
    assert outcome.kind == "temporary" and outcome.code == 554


# --- office relay and local mailboxes ---------------------------------------------------
def test_relay_hop_plain_smtp(env, server):
    port, sink = server()
    env.queue.enqueue(SENDER, [("x@elsewhere.test", relay_hop("127.0.0.1", port))], BODY)
    run(env.worker())
    [(mail_from, rcpts, _, over_tls)] = sink.received
    assert (mail_from, rcpts, over_tls) == (SENDER, ["x@elsewhere.test"], False)
    only(env.queue, "delivered")


def test_maildir_delivery_writes_one_private_file(env):
    env.queue.enqueue(SENDER, [("Carol@A.gov.test", maildir_hop("Carol@A.gov.test"))], BODY)
    run(env.worker())
    only(env.queue, "delivered")
    box = env.tmp / "Maildir" / "carol@a.gov.test"
    [f] = list((box / "new").iterdir())
    assert f.read_bytes() == BODY and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert list((box / "tmp").iterdir()) == [] and (box / "cur").is_dir()
    for d in (box, box / "new", box / "tmp", box / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


# --- the recipient key check before sending ---------------------------------------------
def test_pre_send_veto_bounces_and_sends_nothing(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    hop = smtp_hop("127.0.0.1", port, pin)
    env.queue.enqueue(SENDER, [(RCPT, hop), ("carol@b.gov.test", hop)], BODY)
    veto = lambda claim: "recipient key expired" if claim.recipient == RCPT else None  # noqa: E731
    run(env.worker(pre_send=veto))
    assert [r[1] for r in sink.received] == [["carol@b.gov.test"]]
    states = {r["recipient"]: (r["state"], r["last_error"]) for r in env.queue.list() if r["sender"]}
    assert states[RCPT] == ("bounced", "recipient key expired")
    [(to, raw)] = dsns(env.queue)
    assert to == SENDER and b"recipient key expired" in raw and b"Status: 5.7.0" in raw
    assert b"SECRET-BODY-TEXT" not in raw


# --- several workers, one queue ----------------------------------------------------------
def test_two_workers_deliver_each_message_exactly_once(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    hop = smtp_hop("127.0.0.1", port, pin)
    n = 24
    for i in range(n):
        env.queue.enqueue(SENDER, [(f"r{i}@b.gov.test", hop)], BODY.replace(b"m1@", b"m%d@" % i))
    other_engine = make_engine(f"sqlite:///{env.tmp / 'queue.db'}")  # as a second process would
    other = Queue(other_engine, env.clock, audit_log=AuditLog(other_engine, env.clock))
    workers = [env.worker("w1", batch=4, concurrency=3), env.worker("w2", q=other, batch=4, concurrency=3)]

    async def drain(w):
        total = 0
        while (n_claimed := await w.run_once()):
            total += n_claimed
        return total

    async def both():
        return await asyncio.gather(*(drain(w) for w in workers))

    claimed = asyncio.run(both())
    other_engine.dispose()
    assert sum(claimed) == n and all(claimed), claimed
    rcpts = sorted(r[1][0] for r in sink.received)
    assert rcpts == sorted(f"r{i}@b.gov.test" for i in range(n))
    assert env.queue.stats()["delivered"] == n
    assert env.queue.audit_log.verify().ok


def test_run_loop_stops_on_event(env, server, tls):
    ctx, pin, _ = tls
    port, sink = server(tls_context=ctx, require_starttls=True)
    env.queue.enqueue(SENDER, [(RCPT, smtp_hop("127.0.0.1", port, pin))], BODY)
    worker = env.worker(poll_interval=0.05)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        for _ in range(200):
            if sink.received:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(sink.received) == 1
    only(env.queue, "delivered")
