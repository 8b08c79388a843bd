"""Queue tests on a real SQLite file and a real PostgreSQL schema: durability, claims, leases."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections import Counter

import pytest

from securemail.audit import AuditLog
from securemail.db import make_engine
from securemail.schema import create_schema
from securemail.errors import TemporaryFailure, UsageError
from securemail.queue import NewMessage, Queue, next_retry

CLOSED_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"
HOP = "smtp:mx.example.org:25"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(engine, clock):
    return Queue(engine, clock, audit_log=AuditLog(engine, clock))


# --- intake ---------------------------------------------------------------------
def test_enqueue_is_durable_across_engines(target, queue):
    body = b"-----BEGIN PGP MESSAGE-----\r\n\x00\xff binary ok\r\n"
    mid = queue.enqueue("a@gov.example", [("b@x.example", HOP), ("c@y.example", "maildir")],
                        body, peer="192.0.2.1", meta={"tls": True})
    for engine in target.engines:
        engine.dispose()
    again = Queue(target.engine())
    shown = again.show(mid)
    assert shown["sender"] == "a@gov.example" and shown["size"] == len(body)
    assert shown["peer"] == "192.0.2.1" and shown["meta"] == {"tls": True}
    assert "body" not in shown
    assert sorted(d["recipient"] for d in shown["deliveries"]) == ["b@x.example", "c@y.example"]
    assert {d["state"] for d in shown["deliveries"]} == {"queued"}
    assert again.body(mid) == body
    assert again.show(mid, with_body=True)["body"] == body


def test_enqueue_many_is_one_transaction(queue):
    items = [NewMessage(f"s{i}@gov.example", [(f"r{i}@x.example", HOP)], b"x" * i)
             for i in range(50)]
    ids = queue.enqueue_many(items)
    assert len(set(ids)) == 50 and queue.stats()["queued"] == 50
    # A bad item anywhere means nothing from the batch is stored.
    with pytest.raises(UsageError):
        queue.enqueue_many(items[:3] + [NewMessage("s@gov.example", [], b"")])
    assert queue.stats()["queued"] == 50


def test_enqueue_with_audit_commits_together(engine, clock):
    log = AuditLog(engine, clock)
    queue = Queue(engine, clock, audit_log=log)
    mid = queue.enqueue("", [("r@x.example", HOP)], b"body",
                        audit=("accepted", {"peer": "192.0.2.1"}))
    [rec] = log.records()
    assert rec.kind == "accepted" and rec.fields == {"message_id": mid, "peer": "192.0.2.1"}
    with pytest.raises(UsageError):  # not JSON metadata: the message rolls back too
        queue.enqueue("", [("r@x.example", HOP)], b"body", audit=("accepted", {"raw": b"x"}))
    assert queue.stats()["queued"] == 1 and len(log.records()) == 1
    with pytest.raises(UsageError):
        Queue(engine, clock).enqueue("", [("r@x.example", HOP)], b"b", audit=("accepted", {}))


def test_enqueue_rejects_bad_input(queue):
    with pytest.raises(UsageError):
        queue.enqueue("a@gov.example", [], b"x")
    with pytest.raises(UsageError):
        queue.enqueue("a@gov.example", [("r@x.example", HOP)], "text, not bytes")


# --- claims and leases ------------------------------------------------------------
def test_claim_excludes_leased_and_not_due(queue, clock):
    queue.enqueue("a@gov.example", [(f"r{i}@x.example", HOP) for i in range(3)], b"m")
    first = queue.claim("w1", 2, 3600)
    second = queue.claim("w2", 10, 3600)
    assert len(first) == 2 and len(second) == 1
    assert not {c.delivery_id for c in first} & {c.delivery_id for c in second}
    assert queue.claim("w3", 10, 60) == []
    assert first[0].attempts == 1 and first[0].sender == "a@gov.example"
    assert queue.defer(second[0], "421 busy", retry_at=clock() + 300)
    clock.advance(299)
    assert [c.delivery_id for c in queue.claim("w3", 10, 1)] == []
    clock.advance(1)
    [again] = queue.claim("w3", 10, 1)
    assert again.delivery_id == second[0].delivery_id and again.attempts == 2


def test_expired_lease_is_reclaimable_and_old_owner_loses(queue, clock):
    mid = queue.enqueue("a@gov.example", [("r@x.example", HOP)], b"m")
    [old] = queue.claim("w1", 1, 60)
    clock.advance(61)
    [new] = queue.claim("w2", 1, 60)
    assert new.delivery_id == old.delivery_id and new.attempts == 2
    assert not queue.mark_delivered(old)
    assert not queue.defer(old, "x", clock() + 10)
    assert not queue.bounce(old, "x")
    assert not queue.hold(old, "x")
    assert queue.mark_delivered(new, audit=("delivered", {"hop": HOP}))
    assert not queue.mark_delivered(new)  # settled once only
    assert queue.show(mid)["deliveries"][0]["state"] == "delivered"
    assert [r.kind for r in queue.audit_log.records()] == ["delivered"]


def test_settle_many_is_one_transaction_with_a_lease_check_each(queue, clock):
    queue.enqueue("a@gov.example", [("r1@x.example", HOP), ("r2@x.example", HOP)], b"m")
    old = queue.claim("w1", 2, 60)
    clock.advance(61)
    new = queue.claim("w2", 1, 60)  # takes one of the two over
    mine = [c for c in old if c.delivery_id != new[0].delivery_id][0]
    stolen = [c for c in old if c.delivery_id == new[0].delivery_id][0]
    got = queue.settle_many([
        (mine, queue.delivered_values(), ("delivered", {"hop": HOP})),
        (stolen, queue.deferred_values("4xx", clock() + 10), ("deferred", {"hop": HOP})),
    ])
    assert got == [True, False]
    assert queue.stats()["delivered"] == 1 and queue.stats()["queued"] == 1
    assert [r.kind for r in queue.audit_log.records()] == ["delivered"]  # only what happened


def test_expired_but_unclaimed_lease_can_still_settle(queue, clock):
    queue.enqueue("a@gov.example", [("r@x.example", HOP)], b"m")
    [c] = queue.claim("w1", 1, 60)
    clock.advance(120)
    assert queue.mark_delivered(c)


def test_bounce_hold_retry_delete_gc(queue, clock):
    mid = queue.enqueue("a@gov.example", [("r1@x.example", HOP), ("r2@x.example", HOP)], b"m")
    a, b = queue.claim("w", 10, 60)
    assert queue.bounce(a, "550 no such user")
    assert queue.hold(b, "key expired")
    assert queue.stats() == {"queued": 0, "delivered": 0, "bounced": 1, "held": 1}
    assert queue.claim("w", 10, 60) == []
    assert [d["recipient"] for d in queue.list("held")] == [b.recipient]
    assert queue.purge().rows == 0  # a held delivery keeps the message
    assert queue.retry(mid, audit=("requeued", {"by": "operator"})) == 1  # bounced stays
    [again] = queue.claim("w", 10, 60)
    assert again.delivery_id == b.delivery_id
    assert queue.retry(again.delivery_id) == 0  # live lease: left to its worker
    assert queue.mark_delivered(again)
    assert queue.purge().messages == 1 and queue.show(mid) is None and queue.body(mid) is None
    other = queue.enqueue("a@gov.example", [("r@x.example", HOP)], b"m")
    assert queue.delete(other, audit=("deleted", {})) and not queue.delete(other)
    assert queue.list() == []
    assert [(r.kind, r.fields) for r in queue.audit_log.records()] == [
        ("requeued", {"by": "operator", "requeued": 1, "target": mid}),
        ("deleted", {"message_id": other})]
    assert queue.audit_log.verify().ok
    with pytest.raises(UsageError):
        queue.list("nonsense")


def _drain(queue: Queue, name: str, out: list, barrier=None) -> None:
    """Claim and settle until nothing is due; ``out`` gets every claimed id, and
    ("lost", id) for a settle that failed (which must not happen here)."""
    if barrier is not None:
        barrier.wait(120)
    while claims := queue.claim(name, 7, 300):
        for c in claims:
            out.append(c.delivery_id)
            if not queue.mark_delivered(c):
                out.append(("lost", c.delivery_id))


def _exactly_once(results: list[list]) -> None:
    counts = Counter(d for r in results for d in r)
    assert len(counts) == 200 and set(counts.values()) == {1}, "a delivery was claimed twice, or a settle lost"


def _fill(queue: Queue, n_messages: int = 20, per_message: int = 10) -> None:
    queue.enqueue_many(NewMessage("a@gov.example", [(f"r{j}@x.example", HOP)
                                                    for j in range(per_message)], b"m")
                       for _ in range(n_messages))


def test_threads_claim_each_delivery_exactly_once(engine):
    queue = Queue(engine)
    _fill(queue)
    results: list[list] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=_drain, args=(queue, f"t{i}", results[i], barrier))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    _exactly_once(results)
    assert queue.stats()["delivered"] == 200


def _process_worker(url, search_path, name, barrier, out) -> None:
    got: list = []
    try:
        engine = make_engine(url, search_path=search_path, busy_timeout=30)
        _drain(Queue(engine), name, got, barrier)
        engine.dispose()
    finally:
        out.put(got)


def test_processes_claim_each_delivery_exactly_once(target, engine):
    queue = Queue(engine)
    _fill(queue)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_process_worker,
                         args=(target.url, target.search_path, f"p{i}", barrier, out))
             for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _exactly_once(results)
    assert queue.stats()["delivered"] == 200


# --- failures become 4xx ----------------------------------------------------------
def test_unreachable_postgres_is_temporary_failure():
    engine = make_engine(CLOSED_PG_URL)
    try:
        with pytest.raises(TemporaryFailure) as info:
            Queue(engine).enqueue("a@gov.example", [("r@x.example", HOP)], b"m")
        err = info.value
        assert err.smtp_reply().startswith("451 4.3.0 ") and err.temporary
        assert "INSERT" not in str(err) and "127.0.0.1" not in str(err)
        assert "OperationalError" in err.detail and "INSERT" not in err.detail
        with pytest.raises(TemporaryFailure):
            create_schema(engine)
    finally:
        engine.dispose()


def test_locked_sqlite_is_temporary_failure(tmp_path):
    path = tmp_path / "q.db"
    engine = make_engine(f"sqlite:///{path}", busy_timeout=0.2)
    create_schema(engine)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TemporaryFailure) as info:
            Queue(engine).enqueue("a@gov.example", [("r@x.example", HOP)], b"m")
        assert "locked" in info.value.detail
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        engine.dispose()


def test_sqlite_engine_settings(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/a/b/q.db", busy_timeout=2.5)
    try:
        with engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == 2  # FULL
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 2500
        assert (tmp_path / "a" / "b" / "q.db").exists()
    finally:
        engine.dispose()


# --- retry schedule ---------------------------------------------------------------
def test_next_retry_doubles_then_caps():
    delays = [next_retry(n, created_at=0, now=1000) - 1000 for n in range(1, 8)]
    assert delays == [300, 600, 1200, 2400, 3600, 3600, 3600]
    assert next_retry(0, created_at=0, now=0) == 300
    assert next_retry(10**6, created_at=0, now=0) == 3600
    assert next_retry(1, first=60, cap=120, created_at=0, now=0) == 60


def test_next_retry_gives_up_at_deadline():
    day = 86400
    assert next_retry(3, created_at=0, now=5 * day) is None
    assert next_retry(3, created_at=0, now=5 * day - 10) == 5 * day  # last try at the deadline
    assert next_retry(1, give_up_after=100, created_at=0, now=99) == 100


@pytest.mark.parametrize("auto", [True, False])
def test_intake_commits_leave_sqlite_checkpoints_to_whoever_calls_checkpoint(tmp_path, auto):
    path = tmp_path / "q.db"
    engine = make_engine(f"sqlite:///{path}", wal_autocheckpoint=auto)
    create_schema(engine)
    q = Queue(engine)
    for _ in range(15):  # ~6 MB of WAL: past SQLite's 1000-page autocheckpoint
        q.enqueue_many([NewMessage("a@x.example", [("b@y.example", "relay:127.0.0.1:25")], b"z" * 8000)
                        for _ in range(50)])

    mib = 1 << 20
    if auto:  # commits crossing 1000 WAL pages copied them into the database file themselves
        assert path.stat().st_size > 3 * mib
    else:  # nothing reached the database file until checkpoint(), which copies it all
        assert path.stat().st_size < mib
        q.checkpoint()
        assert path.stat().st_size > 5 * mib
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 750
    engine.dispose()
