"""Audit log tests on a real SQLite file and a real PostgreSQL schema: chain, tampering, races."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from securemail.audit import GENESIS, AuditLog, audit, audit_head, chain_hash
from securemail.db import make_engine
from securemail.errors import TemporaryFailure, UsageError



# --- fixtures (target and engine: tests/conftest.py) ------------------------------
@pytest.fixture
def log(engine):
    ticks = iter(range(1_700_000_000, 1_800_000_000))
    return AuditLog(engine, clock=lambda: next(ticks) + 0.25)


def tamper(engine, *statements) -> None:
    with engine.begin() as conn:
        for stmt in statements:
            conn.execute(stmt)


@pytest.fixture
def five(log):
    for i in range(5):
        log.append("accepted", message_id=f"m{i}", peer="192.0.2.1", size=100 + i)
    return log


# --- chain ----------------------------------------------------------------------
def test_append_builds_a_verifiable_chain(target, log):
    assert log.verify().ok and log.verify().count == 0
    a = log.append("accepted", peer="192.0.2.1", rcpts=["b@x.example"], tls=True)
    b = log.append("key-change", fingerprint="AB" * 20)
    assert (a.seq, b.seq) == (1, 2) and a.prev_hash == GENESIS and b.prev_hash == a.hash
    assert b.hash == chain_hash(a.hash, 2, b.at, "key-change", {"fingerprint": "AB" * 20})
    assert log.head() == (2, b.hash)
    for engine in target.engines:
        engine.dispose()
    again = AuditLog(target.engine())
    assert again.records() == [a, b]
    assert [r.seq for r in again.records(since=1)] == [2]
    assert [r.seq for r in again.records(limit=1)] == [1]
    report = again.verify()
    assert report.ok and report.count == 2 and report.first_bad_seq is None


def test_fields_are_stored_as_sorted_json(engine, log):
    log.append("refused", zeta=1, alpha="x")
    with engine.connect() as conn:
        assert conn.execute(sa.select(audit.c.fields)).scalar() == '{"alpha":"x","zeta":1}'


def test_content_like_values_are_refused(log):
    with pytest.raises(UsageError):
        log.append("accepted", body=b"raw bytes")
    with pytest.raises(UsageError):
        log.append("accepted", score=float("nan"))
    with pytest.raises(UsageError):
        log.append("")
    assert log.verify().count == 0


# --- tampering ------------------------------------------------------------------
def test_verify_detects_edited_fields(engine, five):
    tamper(engine, audit.update().where(audit.c.seq == 3).values(
        fields='{"message_id":"m2","peer":"203.0.113.9","size":102}'))
    report = five.verify()
    assert not report.ok and report.first_bad_seq == 3 and "altered" in report.reason
    assert report.count == 2


def test_verify_detects_edited_time_and_kind(engine, five):
    tamper(engine, audit.update().where(audit.c.seq == 2).values(at=audit.c.at + 1))
    assert five.verify().first_bad_seq == 2
    tamper(engine, audit.update().where(audit.c.seq == 2).values(at=audit.c.at - 1),
           audit.update().where(audit.c.seq == 4).values(kind="refused"))
    assert five.verify().first_bad_seq == 4


def test_verify_detects_rehashed_edit(engine, five):
    """Recomputing the edited record's own hash still breaks the next link."""
    r = five.records()[1]
    forged = chain_hash(r.prev_hash, r.seq, r.at, "refused", r.fields)
    tamper(engine, audit.update().where(audit.c.seq == 2).values(kind="refused", hash=forged))
    report = five.verify()
    assert not report.ok and report.first_bad_seq == 3 and "chain" in report.reason


def test_verify_detects_deleted_record(engine, five):
    tamper(engine, audit.delete().where(audit.c.seq == 2))
    report = five.verify()
    assert not report.ok and report.first_bad_seq == 2 and "missing" in report.reason


def test_verify_detects_truncated_tail(engine, five):
    tamper(engine, audit.delete().where(audit.c.seq >= 4))
    report = five.verify()
    assert not report.ok and report.count == 3 and report.first_bad_seq == 4
    assert "truncated" in report.reason


def test_verify_detects_forged_head(engine, five):
    tamper(engine, audit.delete().where(audit.c.seq == 5),
           audit_head.update().values(seq=4))  # hash left as it was
    report = five.verify()
    assert not report.ok and "head" in report.reason


def test_verify_detects_reordered_records(engine, five):
    tamper(engine,
           audit.update().where(audit.c.seq == 2).values(seq=-2),
           audit.update().where(audit.c.seq == 3).values(seq=2),
           audit.update().where(audit.c.seq == -2).values(seq=3))
    report = five.verify()
    assert not report.ok and report.first_bad_seq == 2


def test_verify_detects_wiped_log(engine, five):
    tamper(engine, audit.delete())
    report = five.verify()
    assert not report.ok and report.first_bad_seq == 1 and "truncated" in report.reason


# --- concurrency and failures -----------------------------------------------------
def test_concurrent_appends_keep_a_valid_chain(engine):
    log = AuditLog(engine)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            barrier.wait(30)
            for i in range(60):
                log.append("delivered", worker=name, n=i)
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    report = log.verify()
    assert report.ok and report.count == 120
    assert [r.seq for r in log.records()] == list(range(1, 121))


def test_unreachable_database_is_temporary_failure():
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(TemporaryFailure) as info:
            AuditLog(engine).append("accepted", peer="192.0.2.1")
        assert info.value.smtp_reply().startswith("451 ")
        with pytest.raises(TemporaryFailure):
            AuditLog(engine).verify()
    finally:
        engine.dispose()


def test_missing_head_row_is_temporary_failure(engine, log):
    tamper(engine, audit_head.delete())
    with pytest.raises(TemporaryFailure):
        log.append("accepted")
    assert not log.verify().ok
