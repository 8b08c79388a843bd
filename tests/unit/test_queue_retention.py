"""Bodies at rest: removed when a message's last delivery settles, metadata purged after retention.

On a real SQLite file and a real PostgreSQL schema (the ``target`` fixture): the
body stays while any delivery is pending, goes in the transaction of the settle
that finishes the message (one more statement per settle batch), and a purge
never touches a message with a pending delivery. On SQLite, the removed bytes are
gone from the database file and its -wal and -shm, not only from the rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from securemail.audit import AuditLog
from securemail.config import GatewayConfig, QueueSettings, parse_duration
from securemail.db import checkpoint, make_engine, transaction
from securemail.errors import ConfigError
from securemail.queue import Queue
from securemail.queue.models import deliveries as D
from securemail.queue.retention import Retention, purge_all
from tests.unit.test_queue import Clock, clock, queue  # noqa: F401 - the same clock and queue fixtures

HOP_J, HOP_K = "smtp:gw.justice.example:25", "smtp:gw.culture.example:25"
MARKER = b"BODY-AT-REST-5f0e"


def body(n: int = 9000) -> bytes:
    """A body with the marker in its first and last lines, over two SQLite overflow pages."""
    filler = b"".join(b"%05d-----------------------------------------------------------\r\n" % i
                      for i in range(n // 72))
    return MARKER + b"\r\n" + filler + MARKER + b"\r\n"


def two_hops(queue: Queue) -> tuple[str, dict]:
    mid = queue.enqueue("a@gov.example", [("r1@justice.example", HOP_J), ("r2@culture.example", HOP_K)],
                        body())
    claims = {c.next_hop: c for c in queue.claim("w", 10, 60)}
    return mid, claims


# --- the body goes with the last settle, never before ----------------------------------------
def test_body_stays_while_a_delivery_is_pending_and_goes_with_the_last(queue, clock):
    mid, claims = two_hops(queue)
    assert queue.mark_delivered(claims[HOP_J])
    assert queue.body(mid) == body()  # the second hop still needs it
    assert queue.defer(claims[HOP_K], "421 busy", retry_at=clock() + 10)
    assert queue.body(mid) == body()
    clock.advance(10)
    [again] = queue.claim("w", 10, 60)
    assert queue.bounce(again, "550 no such user")
    assert queue.body(mid) is None
    shown = queue.show(mid, with_body=True)  # metadata stays, for queue.retention
    assert shown["body"] == b"" and shown["size"] == len(body())
    assert sorted(d["state"] for d in shown["deliveries"]) == ["bounced", "delivered"]


def test_a_held_delivery_keeps_the_body(queue):
    mid, claims = two_hops(queue)
    assert queue.mark_delivered(claims[HOP_J]) and queue.hold(claims[HOP_K], "bad hop")
    assert queue.body(mid) == body()
    assert queue.purge().rows == 0 and queue.body(mid) == body()


def test_a_settle_that_lost_its_lease_removes_nothing(queue, clock):
    mid = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    [old] = queue.claim("w1", 1, 60)
    clock.advance(61)
    [new] = queue.claim("w2", 1, 60, with_bodies=1 << 20)  # w1 crashed or stalled: w2 owns it now
    assert not queue.mark_delivered(old)
    assert queue.body(mid) == body()
    assert new.body == body() and queue.mark_delivered(new) and queue.body(mid) is None


def test_both_last_deliveries_in_one_batch(queue):
    mid, claims = two_hops(queue)
    assert queue.settle_many([(c, queue.delivered_values(), None) for c in claims.values()]) == [True, True]
    assert queue.body(mid) is None


def test_a_finished_message_is_never_requeued_without_its_body(queue):
    mid = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    [c] = queue.claim("w", 1, 60)
    assert queue.bounce(c, "550 no such user") and queue.body(mid) is None
    assert queue.retry(c.delivery_id) == 0 and queue.retry(mid) == 0
    assert queue.claim("w", 1, 60) == []


def test_settle_batch_costs_one_statement_more(engine, queue, clock):
    """A batch of delivered settles: its UPDATE ... RETURNING, then one statement for the bodies."""
    for i in range(40):
        queue.enqueue("a@gov.example", [(f"r{i}@justice.example", HOP_J)], body(600))
    claims = queue.claim("w", 40, 60)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, sql, *a: statements.append(sql.split()[0].upper()))
    deferred = [(c, queue.deferred_values("421", clock() + 5), None) for c in claims[:20]]
    assert all(queue.settle_many(deferred))
    no_final = [s for s in statements if s not in ("BEGIN", "COMMIT")]
    statements.clear()
    assert all(queue.settle_many([(c, queue.delivered_values(), None) for c in claims[20:]]))
    final = [s for s in statements if s not in ("BEGIN", "COMMIT")]
    assert no_final == ["UPDATE"] and final == ["UPDATE", "UPDATE"], (no_final, final)
    assert queue.stats()["delivered"] == 20
    assert sum(queue.body(c.message_id) is None for c in claims) == 20


# --- purge: metadata after retention, leftovers, never pending mail ----------------------------
def test_purge_waits_for_retention_and_spares_pending_mail(queue, clock):
    done = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    pending = queue.enqueue("a@gov.example", [("p@justice.example", HOP_K)], body())
    claims = {c.message_id: c for c in queue.claim("w", 10, 60)}
    assert queue.mark_delivered(claims[done])
    assert queue.defer(claims[pending], "421", retry_at=clock() + 10 ** 6)
    clock.advance(3600)
    assert queue.purge(older_than=7200).rows == 0 and queue.show(done) is not None
    clock.advance(3601)
    got = queue.purge(older_than=7200, audit=("purged", {"by": "test"}))
    assert (got.messages, got.deliveries, got.bodies, got.more) == (1, 1, 0, False)
    assert queue.show(done) is None
    clock.advance(10 ** 7)
    assert queue.purge().rows == 0 and queue.body(pending) == body()  # a pending delivery: untouched
    [rec] = queue.audit_log.records()
    assert rec.kind == "purged" and rec.fields == {"by": "test", "messages": 1, "deliveries": 1, "bodies": 0}
    assert queue.audit_log.verify().ok


def test_purge_removes_leftover_bodies_of_finished_messages(engine, queue):
    """A finished message whose body is still there (a database from before this rule)."""
    mid = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    with engine.begin() as conn:  # as an older gateway left it: delivered, body kept
        conn.execute(D.update().values(state="delivered"))
    got = queue.purge(older_than=86400)
    assert (got.messages, got.bodies) == (0, 1)
    assert queue.body(mid) is None and queue.show(mid) is not None


def test_purge_works_in_bounded_batches(queue):
    ids = [queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], b"m") for _ in range(7)]
    for c in queue.claim("w", 10, 60):
        assert queue.mark_delivered(c)
    first = queue.purge(limit=3)
    assert first.messages == 3 and first.more
    total = purge_all(queue, 0, batch=3)
    assert total.messages == 4 and not total.more
    assert all(queue.show(i) is None for i in ids)


def test_the_sweep_uses_the_configured_retention(queue, clock):
    mid = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], b"m")
    [c] = queue.claim("w", 1, 60)
    assert queue.mark_delivered(c)
    sweep = Retention(queue, retention=30 * 86400, interval=3600)
    clock.advance(30 * 86400 - 1)
    assert sweep.sweep().rows == 0
    clock.advance(1)
    assert sweep.sweep().rows == 2 and queue.show(mid) is None
    assert [r.fields["by"] for r in queue.audit_log.records()] == ["retention"]


# --- SQLite: removed means gone from the files --------------------------------------------------
def files_hold(db: Path, needle: bytes) -> list[str]:
    return [p.name for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
            if p.exists() and needle in p.read_bytes()]


def test_sqlite_removed_body_is_gone_from_the_database_and_wal_files(tmp_path, clock):
    db = tmp_path / "queue.db"
    engine = make_engine(f"sqlite:///{db}", wal_autocheckpoint=False)  # as serve's processes run
    from securemail.schema import create_schema
    create_schema(engine)
    queue = Queue(engine, clock)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    mid = queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    queue.checkpoint()
    assert files_hold(db, MARKER)  # the check can see a body that is there
    [c] = queue.claim("w", 1, 60)
    assert queue.mark_delivered(c)
    queue.checkpoint()  # what the delivery workers run every second
    assert files_hold(db, MARKER) == []
    assert queue.show(mid)["size"] == len(body())
    engine.dispose()


def test_without_secure_delete_a_removed_body_would_stay_in_the_file(tmp_path, clock):
    """The control of the test above: the same steps with secure_delete turned off again leave the
    body readable in the database file's free space (so the scan sees it, and the pragma matters;
    some SQLite builds, Debian's among them, have it on by default, others off)."""
    db = tmp_path / "queue.db"
    engine = make_engine(f"sqlite:///{db}", wal_autocheckpoint=False)
    sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA secure_delete=OFF"))
    from securemail.schema import create_schema
    create_schema(engine)
    queue = Queue(engine, clock)
    queue.enqueue("a@gov.example", [("r@justice.example", HOP_J)], body())
    queue.checkpoint()
    [c] = queue.claim("w", 1, 60)
    assert queue.mark_delivered(c)
    queue.checkpoint()
    assert files_hold(db, MARKER) == ["queue.db"]
    engine.dispose()


def test_sqlite_truncating_checkpoint_waits_for_readers(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}", wal_autocheckpoint=False)
    from securemail.schema import create_schema
    create_schema(engine)
    Queue(engine).enqueue("a@gov.example", [("r@justice.example", HOP_J)], b"m")
    with transaction(engine, write=False) as reader:
        reader.exec_driver_sql("SELECT count(*) FROM messages").scalar()
        assert checkpoint(engine, truncate=True) is False  # a reader on the WAL: not now
    assert checkpoint(engine, truncate=True) is True
    assert (tmp_path / "q.db-wal").stat().st_size == 0
    engine.dispose()


# --- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400.0), ("12h", 43200.0), ("15m", 900.0),
                                          ("45s", 45.0), ("1.5", 1.5), (60, 60.0), ("0", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text, "queue.retention") == seconds


@pytest.mark.parametrize("bad", ["", "d", "-1d", "30 days", "nan", "inf", True, None, [1]])
def test_bad_durations(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad, "queue.retention")


def test_queue_table_in_the_config(tmp_path):
    base = {"gateway": {"domains": ["interieur.example"]}}
    assert GatewayConfig.from_dict(base, tmp_path).queue == QueueSettings(30 * 86400.0, 3600.0)
    cfg = GatewayConfig.from_dict({**base, "queue": {"retention": "7d", "purge_interval": "10m"}}, tmp_path)
    assert cfg.queue == QueueSettings(7 * 86400.0, 600.0)
    with pytest.raises(ConfigError):
        GatewayConfig.from_dict({**base, "queue": {"purge_interval": 0}}, tmp_path)
