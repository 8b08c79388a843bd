"""Bodies and metadata at rest on running gateways, on SQLite and on PostgreSQL.

A message's body is kept exactly as long as one of its deliveries is pending: the
next hop (justice's gateway, limited to one recipient per transaction) takes one
recipient now and the other at the next retry, and the body is gone with the second.
Metadata is removed by the gateway itself after ``queue.retention`` and by
``securemail queue purge``; mail still to deliver is never touched, and the audit
log (hash-chained) is kept.
"""

from __future__ import annotations

import json
import time

import pytest

from securemail.app import open_home
from securemail.queue import Queue
from tests.conftest import run_cli

from tests.support import (OFFICE, Running, audit_records, federation, office_send, ok, person, pg_schemas,
                           queue_rows, wait_for)

pytestmark = pytest.mark.timeout(300)

A, J = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO, CLAIRE = f"alice@{A}", f"bruno@{J}", f"claire@{J}"


def mail(tag: str, to: str) -> bytes:
    return (f"From: Alice Martin <{ALICE}>\r\nTo: {to}\r\nSubject: Note\r\n"
            f"Message-ID: <{tag}@{A}>\r\n\r\nTexte {tag} au bureau.\r\n").encode()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fed(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"purge-{request.param}")
    if request.param == "sqlite":
        yield _federation(tmp, None)
        return
    with pg_schemas("a") as urls:
        yield _federation(tmp, {A: urls["a"]})


def _federation(tmp, urls):
    _, homes = federation(tmp, domains=(A, J), database_urls=urls, trusted=OFFICE + "/32")
    a, j = homes[A], homes[J]
    for address in (BRUNO, CLAIRE):
        person(tmp, address, j)
    j.tune(recipients="1")            # one recipient per transaction: the second waits for a retry
    a.tune(first="4", cap="4")        # long enough to see the body kept in between
    return a, j


def snapshot(home, qid: str) -> dict | None:
    """The message's deliveries and its stored body, read in one database snapshot."""
    core = open_home(home)
    try:
        return Queue(core.engine).show(qid, with_body=True)
    finally:
        core.close()


def states(shown: dict | None) -> list[str]:
    return sorted(d["state"] for d in shown["deliveries"]) if shown else []


def test_the_body_stays_until_the_last_delivery_settles(fed):
    a, j = fed
    with Running(a, j, cpu_workers=0):
        qid = office_send(a.relay, ALICE, [BRUNO, CLAIRE], mail("two-rcpt", f"{BRUNO}, {CLAIRE}"))
        half = wait_for(lambda: (s := snapshot(a.home, qid)) and states(s) == ["delivered", "queued"] and s,
                        what="one recipient delivered, the other deferred")
        assert len(half["body"]) == half["size"] > 0  # the deferred delivery still needs it
        done = wait_for(lambda: (s := snapshot(a.home, qid)) and states(s) == ["delivered", "delivered"] and s,
                        what="the second recipient at the retry")
    assert done["body"] == b"" and done["size"] == half["size"]  # gone; the metadata is kept
    assert [r["recipient"] for r in queue_rows(a.home, qid)] != []


def test_the_running_gateway_removes_metadata_after_retention(fed):
    a, _ = fed
    a.tune(retention='"1s"', purge_interval="0.2")
    try:
        with Running(a, cpu_workers=0):  # justice is down: mail for bruno stays pending
            pending = office_send(a.relay, ALICE, [BRUNO], mail("pending", BRUNO))
            done = office_send(a.relay, ALICE, [ALICE], mail("local", ALICE))
            wait_for(lambda: queue_rows(a.home, done) == [], what="the sweep after queue.retention")
            assert [r for r in audit_records(a.home, "delivered") if r["fields"]["message_id"] == done]
            assert any(b"<local@" in f.read_bytes() for f in (a.home / "Maildir" / ALICE / "new").iterdir())
            wait_for(lambda: any(r["fields"]["by"] == "retention" for r in audit_records(a.home, "purged")),
                     what="the audited sweep")
            kept = snapshot(a.home, pending)
            assert states(kept) == ["queued"] and len(kept["body"]) == kept["size"] > 0
            assert kept["created_at"] < time.time() - 1  # older than the retention, and kept
    finally:
        a.tune(retention='"30d"', purge_interval="3600")
    assert "audit log intact" in ok(run_cli(a.home, "audit", "verify")).stdout


def test_queue_purge_removes_finished_mail_now(fed):
    a, _ = fed
    with Running(a, cpu_workers=0):
        done = office_send(a.relay, ALICE, [ALICE], mail("purge-now", ALICE))
        pending = office_send(a.relay, ALICE, [BRUNO], mail("purge-pending", BRUNO))
        wait_for(lambda: states(snapshot(a.home, done)) == ["delivered"], what="local delivery")
    recent = json.loads(ok(run_cli(a.home, "queue", "purge", "--older-than", "1h", "--json")).stdout)
    assert recent == {"rows": 0, "messages": 0, "deliveries": 0, "bodies": 0}
    assert queue_rows(a.home, done)
    out = json.loads(ok(run_cli(a.home, "queue", "purge", "--json")).stdout)
    assert out["messages"] >= 1 and out["rows"] == out["messages"] + out["deliveries"], out
    assert queue_rows(a.home, done) == [] and snapshot(a.home, done) is None
    kept = snapshot(a.home, pending)
    assert states(kept) == ["queued"] and len(kept["body"]) == kept["size"] > 0
    assert ok(run_cli(a.home, "queue", "purge")).stdout.strip() == \
        "removed 0 rows (0 messages, 0 deliveries) and 0 leftover bodies"
    bad = run_cli(a.home, "queue", "purge", "--older-than", "soon")
    assert bad.exit_code != 0 and "--older-than must be a duration" in bad.output
    purged = [r["fields"] for r in audit_records(a.home, "purged") if r["fields"]["by"] == "operator"]
    assert purged and sum(f["messages"] for f in purged) == out["messages"]
