"""DeliveryWorker decisions with a fake next hop over a real SQLite queue: group, settle, hold, back off."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from securemail.audit import AuditLog
from securemail.config import GatewayConfig, Retry
from securemail.db import make_engine
from securemail.schema import create_schema
from securemail.delivery.outcome import Outcome
from securemail.delivery.worker import DeliveryWorker
from securemail.transform.hops import maildir_hop, relay_hop, smtp_hop
from securemail.errors import TemporaryFailure, UsageError
from securemail.admin.setup import self_signed_cert
from securemail.queue import Queue

PIN = "cd" * 32
HOP = smtp_hop("gw.b.gov.test", 25, PIN)
BODY = b"Subject: s\r\n\r\nbody\r\n"
OK = Outcome("delivered", 250, "2.0.0 ok")


class Clock:
    def __init__(self) -> None:
        self.t = 5_000.0

    def __call__(self) -> float:
        return self.t


class FakeNet:
    """A deliver_smtp stand-in: records calls and answers with ``reply`` (or raises it)."""

    def __init__(self, reply=OK, during=None) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.reply, self.during = reply, during

    async def __call__(self, hop, mail_from, rcpt, body, *, helo, timeout, tls_client_cert):
        self.calls.append((hop, mail_from, rcpt))
        if self.during:
            self.during()
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


@pytest.fixture
def setup(tmp_path):
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    create_schema(engine)
    queue = Queue(engine, clock, audit_log=AuditLog(engine, clock))
    bounces: list[tuple[bytes, str]] = []

    def worker(net, **kw):
        kw.setdefault("maildir_root", tmp_path / "Maildir")
        return DeliveryWorker(queue, owner="w", helo="gw.a.gov.test", clock=clock, deliver_smtp=net,
                              lease_seconds=120, timeout=10, retry=Retry(60, 600, 3600),
                              bounce_sender=lambda dsn, rcpt: bounces.append((dsn, rcpt)), **kw)
    yield queue, clock, worker, bounces
    engine.dispose()


def states(queue):
    return {r["recipient"]: r["state"] for r in queue.list()}


def test_groups_by_message_and_hop(setup):
    queue, _, worker, _ = setup
    other = smtp_hop("gw.c.gov.test", 25, PIN)
    queue.enqueue("a@a.gov.test", [("b1@b.gov.test", HOP), ("b2@b.gov.test", HOP), ("c@c.gov.test", other)], BODY)
    queue.enqueue("a@a.gov.test", [("b3@b.gov.test", HOP)], BODY)
    net = FakeNet()
    assert asyncio.run(worker(net).run_once()) == 4
    calls = sorted((str(h), (r,) if isinstance(r, str) else tuple(sorted(r))) for h, _, r in net.calls)
    assert calls == sorted([(str(HOP), ("b1@b.gov.test", "b2@b.gov.test")), (str(other), ("c@c.gov.test",)),
                            (str(HOP), ("b3@b.gov.test",))])
    assert set(states(queue).values()) == {"delivered"}


def test_per_recipient_refusal_in_a_group(setup):
    queue, _, worker, bounces = setup
    queue.enqueue("a@a.gov.test", [("b1@b.gov.test", HOP), ("b2@b.gov.test", HOP)], BODY)
    reply = Outcome("delivered", 250, "ok", refused={
        "b2@b.gov.test": Outcome("temporary", 450, "4.2.1 try later")})
    asyncio.run(worker(FakeNet(reply)).run_once())
    assert states(queue) == {"b1@b.gov.test": "delivered", "b2@b.gov.test": "queued"}
    assert bounces == []


def test_unparseable_hop_is_held_not_dropped(setup):
    queue, _, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", "carrier-pigeon:coo")], BODY)
    net = FakeNet()
    asyncio.run(worker(net).run_once())
    assert net.calls == [] and states(queue) == {"b@b.gov.test": "held"}
    assert queue.audit_log.records()[-1].kind == "held"


def test_maildir_without_root_is_held(setup):
    queue, _, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@a.gov.test", maildir_hop("b@a.gov.test"))], BODY)
    asyncio.run(worker(FakeNet(), maildir_root=None).run_once())
    assert states(queue) == {"b@a.gov.test": "held"}


def test_crash_in_delivery_defers(setup):
    queue, clock, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", relay_hop("mx", 25))], BODY)
    asyncio.run(worker(FakeNet(RuntimeError("bug at /srv/secret"))).run_once())
    [row] = queue.list()
    assert (row["state"], row["last_error"]) == ("queued", "internal delivery error")
    assert row["next_attempt_at"] == clock.t + 60


def test_pre_send_failure_defers_and_sends_nothing(setup):
    queue, _, worker, bounces = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", HOP)], BODY)
    net = FakeNet()

    def broken(claim):
        raise OSError("key store unreadable")
    asyncio.run(worker(net, pre_send=broken).run_once())
    assert net.calls == [] and states(queue) == {"b@b.gov.test": "queued"} and bounces == []


def test_async_pre_send_veto_and_relay_not_checked(setup):
    queue, _, worker, bounces = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", HOP), ("x@y.test", relay_hop("mx", 25))], BODY)
    seen = []

    async def veto(claim):
        seen.append(claim.recipient)
        return "recipient key revoked"
    net = FakeNet()
    asyncio.run(worker(net, pre_send=veto).run_once())
    assert seen == ["b@b.gov.test"]  # only member-gateway hops are checked
    assert [c[2] for c in net.calls] == ["x@y.test"]
    assert states(queue) == {"b@b.gov.test": "bounced", "x@y.test": "delivered"}
    [(dsn, to)] = bounces
    assert to == "a@a.gov.test" and b"recipient key revoked" in dsn


def test_lost_lease_is_not_settled(setup):
    queue, clock, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", HOP)], BODY)

    def thief():  # the lease runs out mid-delivery and another worker takes the row
        clock.t += 500
        assert len(queue.claim("thief", 10, 120)) == 1
    asyncio.run(worker(FakeNet(during=thief)).run_once())
    [row] = queue.list()
    assert (row["state"], row["lease_owner"]) == ("queued", "thief")


def test_short_lease_leaves_claim_untouched(setup):
    queue, _, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", HOP)], BODY)
    net = FakeNet()
    w = worker(net)
    w.timeout = 500  # more than the lease: too risky to start
    asyncio.run(w.run_once())
    assert net.calls == [] and queue.list()[0]["lease_owner"] == "w"


def test_give_up_on_null_sender_makes_no_dsn(setup):
    queue, clock, worker, bounces = setup
    queue.enqueue("", [("b@b.gov.test", HOP)], BODY)
    clock.t += 4000
    asyncio.run(worker(FakeNet(Outcome("temporary", None, "connection failed"))).run_once())
    assert states(queue) == {"b@b.gov.test": "bounced"} and bounces == []


def test_lost_dsn_is_logged_and_audited(setup, caplog):
    queue, _, worker, _ = setup
    queue.enqueue("a@a.gov.test", [("b@b.gov.test", HOP)], BODY)
    w = worker(FakeNet(Outcome("permanent", 550, "5.1.1 no such user")))

    def down(dsn, rcpt):
        raise TemporaryFailure(detail="database is locked")
    w.bounce_sender = down
    asyncio.run(w.run_once())
    assert states(queue) == {"b@b.gov.test": "bounced"}
    assert "could not be queued" in caplog.text
    assert queue.audit_log.records()[-1].kind == "dsn_failed"


def test_run_backs_off_while_the_queue_is_down_then_stops():
    class DownQueue:
        audit_log = None
        calls = 0

        def checkpoint(self):
            pass

        def claim(self, owner, limit, lease, with_bodies=0):
            DownQueue.calls += 1
            raise TemporaryFailure(detail="database is locked")

    w = DeliveryWorker(DownQueue(), owner="w", helo="h", poll_interval=0.01, max_backoff=0.04)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 2)
    asyncio.run(main())
    assert 3 <= DownQueue.calls <= 15  # 0.02, 0.04, 0.04, ...: backing off, not spinning


def test_from_config_and_lease_check(tmp_path):
    config = GatewayConfig.from_dict({"gateway": {"domains": ["a.gov.test"], "hostname": "gw.a.gov.test"},
                                      "delivery": {"lease_seconds": 200, "poll_interval": 2}}, tmp_path)
    with pytest.raises(FileNotFoundError):  # the certificate shown to members is read at start
        DeliveryWorker.from_config(config, Queue(None), owner="w1")
    self_signed_cert("gw.a.gov.test", config.tls_cert, config.tls_key)
    w = DeliveryWorker.from_config(config, Queue(None), owner="w1")
    assert w.tls_client_cert.verify_mode == ssl.CERT_NONE  # the pin is checked, not a chain
    assert (w.helo, w.maildir_root, w.lease_seconds, w.poll_interval) == (
        "gw.a.gov.test", tmp_path / "Maildir", 200.0, 2.0)
    with pytest.raises(UsageError):
        DeliveryWorker(Queue(None), owner="w", helo="h", lease_seconds=30, timeout=60)
