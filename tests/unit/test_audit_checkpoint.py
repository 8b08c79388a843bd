"""Audit anchoring on a real SQLite file and a real PostgreSQL schema: a malicious admin truncates, edits,
removes or reorders records, with or without recomputing the whole chain and its head; every change
after a checkpoint is detected and named, even those ``audit verify`` alone cannot see."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from securemail import checkpoint as C
from securemail.audit import GENESIS, AuditLog, audit, audit_head, chain_hash
from securemail.crypto import openpgp
from securemail.crypto.keys import Key

DOMAIN = "interieur.gouv.fr"


@pytest.fixture(scope="module")
def domain_key() -> Key:
    key = Key(openpgp.generate(f"securemail gateway <gateway@{DOMAIN}>", "ed25519", None, None))
    key.pgp.unlocked(None).__enter__()
    return key


@pytest.fixture
def log(engine):
    ticks = iter(range(1_800_000_000, 1_900_000_000))
    return AuditLog(engine, clock=lambda: next(ticks) + 0.5)


@pytest.fixture
def anchored(log, domain_key):
    """Ten records, checkpoints at records 5 and 10: [(name, file bytes)]."""
    files = []
    for i in range(10):
        log.append("accepted", message_id=f"m{i}", peer="192.0.2.1")
        if i in (4, 9):
            cp, data = C.make(log, DOMAIN, domain_key, 1_800_000_000.0 + i)
            files.append((f"cp{cp.seq}", data))
    return files


def key_for(domain_key):
    return {domain_key.fingerprint: domain_key.public()}.get


def verify(log, files, domain_key):
    report, findings = C.verify(log, files, key_for(domain_key))
    return report, {f.name: (f.verdict, f.detail) for f in findings}


def rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(audit).order_by(audit.c.seq))]


def rewrite(engine, records: list[dict]) -> None:
    """What a malicious admin with the database does: replace the log with ``records`` (kind, at,
    fields), numbered from 1, every hash and the head recomputed, so that the chain verifies."""
    prev, out = GENESIS, []
    for seq, r in enumerate(records, 1):
        digest = chain_hash(prev, seq, r["at"], r["kind"], json.loads(r["fields"]))
        out.append({**r, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    with engine.begin() as conn:
        conn.execute(audit.delete())
        if out:
            conn.execute(audit.insert(), out)
        conn.execute(audit_head.update().values(seq=len(out), hash=prev))


def test_an_untouched_log_holds_every_checkpoint(log, anchored, domain_key):
    report, found = verify(log, anchored, domain_key)
    assert report.ok and report.count == 10
    assert {n: v for n, (v, _) in found.items()} == {"cp5": C.HOLDS, "cp10": C.HOLDS}


def test_truncation_is_named_though_the_log_alone_verifies(engine, log, anchored, domain_key):
    rewrite(engine, rows(engine)[:7])
    report, found = verify(log, anchored, domain_key)
    assert report.ok  # the chain and its head agree: only the checkpoint shows the loss
    assert found["cp5"][0] == C.HOLDS
    assert found["cp10"] == (C.TRUNCATED, f"record 10 of {C.read(anchored[1][1], key_for(domain_key)).time} "
                             "is gone: the log ends at record 7 (truncated, or records removed)")


def test_truncation_without_the_head_is_named_too(engine, log, anchored, domain_key):
    with engine.begin() as conn:
        conn.execute(audit.delete().where(audit.c.seq > 6))
    report, found = verify(log, anchored, domain_key)
    assert not report.ok and "truncated" in report.reason
    assert found["cp5"][0] == C.HOLDS and found["cp10"][0] == C.TRUNCATED


def test_a_truncated_log_that_grew_again_is_rewritten(engine, log, anchored, domain_key):
    rewrite(engine, rows(engine)[:7])
    for i in range(4):
        log.append("accepted", message_id=f"new{i}", peer="192.0.2.1")
    report, found = verify(log, anchored, domain_key)
    assert report.ok and report.count == 11
    assert found["cp10"][0] == C.REWRITTEN and "records 6 to 10 were rewritten" in found["cp10"][1]


@pytest.mark.parametrize("seq, first", [(3, 1), (8, 6)])
def test_an_edit_with_the_chain_recomputed_is_named_between_checkpoints(engine, log, anchored, domain_key,
                                                                        seq, first):
    records = rows(engine)
    records[seq - 1]["fields"] = records[seq - 1]["fields"].replace("192.0.2.1", "203.0.113.9")
    rewrite(engine, records)
    report, found = verify(log, anchored, domain_key)
    assert report.ok
    assert found["cp5"][0] == (C.REWRITTEN if seq <= 5 else C.HOLDS)
    assert found["cp10"][0] == C.REWRITTEN and f"records {first} to 10 were rewritten" in found["cp10"][1]


def test_an_edit_without_recomputing_breaks_the_chain_after_the_first_checkpoint(engine, log, anchored,
                                                                                  domain_key):
    with engine.begin() as conn:
        conn.execute(audit.update().where(audit.c.seq == 8).values(kind="refused"))
    report, found = verify(log, anchored, domain_key)
    assert not report.ok and report.first_bad_seq == 8
    assert found["cp5"][0] == C.HOLDS
    assert found["cp10"] == (C.BROKEN, found["cp10"][1])
    assert "the chain is broken at record 8 (record hash mismatch: record was altered)" in found["cp10"][1]


@pytest.mark.parametrize("recompute", [True, False])
def test_reordered_records_are_detected(engine, log, anchored, domain_key, recompute):
    records = rows(engine)
    records[5], records[6] = records[6], records[5]  # records 6 and 7 swapped
    if recompute:
        rewrite(engine, records)
    else:
        with engine.begin() as conn:
            conn.execute(audit.update().where(audit.c.seq == 6).values(seq=-6))
            conn.execute(audit.update().where(audit.c.seq == 7).values(seq=6))
            conn.execute(audit.update().where(audit.c.seq == -6).values(seq=7))
    report, found = verify(log, anchored, domain_key)
    assert found["cp5"][0] == C.HOLDS
    assert found["cp10"][0] == (C.REWRITTEN if recompute else C.BROKEN)
    assert report.ok is recompute


def test_a_removed_record_with_the_rest_renumbered_is_detected(engine, log, anchored, domain_key):
    records = rows(engine)
    del records[6]  # record 7 removed, the later ones renumbered and rehashed
    rewrite(engine, records)
    report, found = verify(log, anchored, domain_key)
    assert report.ok and found["cp5"][0] == C.HOLDS and found["cp10"][0] == C.TRUNCATED


def test_checkpoints_that_are_not_the_domain_keys_are_refused(log, anchored, domain_key):
    doc = json.loads(anchored[1][1])
    doc["checkpoint"]["hash"] = "0" * 64  # the admin "updates" a checkpoint to match a rewritten log
    other = Key(openpgp.generate(f"Someone <someone@{DOMAIN}>", "ed25519", None, None))
    other.pgp.unlocked(None).__enter__()
    _, foreign = C.make(log, DOMAIN, other, 1_800_000_100.0)
    files = [("edited", json.dumps(doc).encode()), ("foreign", foreign), ("garbage", b"{\"checkpoint\": 1}"),
             ("huge", b" " * (C.MAX_CHECKPOINT + 1))]
    _, found = verify(log, files, domain_key)
    assert found["edited"][0] == C.FORGED and "does not verify" in found["edited"][1]
    assert found["foreign"][0] == C.FORGED and "is not a domain key" in found["foreign"][1]
    assert found["garbage"][0] == found["huge"][0] == C.UNREADABLE
    _, found = C.verify(log, [("foreign", foreign)], {other.fingerprint: other.public()}.get)
    assert found[0].verdict == C.FORGED  # its user ID is not gateway@DOMAIN


def test_the_checkpoint_file_and_its_mail(log, anchored, domain_key, tmp_path):
    cp = C.read(anchored[1][1], key_for(domain_key))
    assert (cp.domain, cp.seq, cp.hash, cp.signer) == (DOMAIN, 10, log.head()[1], domain_key.fingerprint)
    path = C.write(tmp_path / "checkpoints", cp, anchored[1][1])
    assert path.name.startswith("audit-000000000010-") and path.read_bytes() == anchored[1][1]
    mail = C.message(cp, anchored[1][1], "authority@federation.gouv.fr", 1_800_000_000.0)
    head, _, body = mail.partition(b"\r\n\r\n")
    assert b"From: securemail audit <gateway@interieur.gouv.fr>\r\n" in head + b"\r\n"
    assert b"Auto-Submitted: auto-generated" in head
    assert C.read(body[body.index(b"{"):].replace(b"\r\n", b"\n"), key_for(domain_key)) == cp
