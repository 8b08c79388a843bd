"""Gateway reliability on loopback: PostgreSQL, restarts with mail queued, a next hop down, bounces, two nodes.

Every test runs real gateways (``Running``, or ``securemail serve`` OS
processes) set up with the real CLI, and the office MTA is a plain SMTP client
on 127.0.0.3. Mail is told apart by its Message-ID, which stays in the outer
headers of the encrypted message, and by the queue id in the gateway's 250.
"""

from __future__ import annotations

import email
import json
import smtplib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email import policy
from pathlib import Path

import pytest

from tests.conftest import run_cli

from tests.support import (OFFICE, Running, Serve, audit_records, federation, office_send, ok, person,
                           pg_schemas, queue_rows, second_node, wait_for)

MARKER = "PLAINTEXT-MARKER-c41d"
ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
NOKEY = "nokey@justice.gouv.fr"   # a justice address with no key at justice's gateway
A, B = "interieur.gouv.fr", "justice.gouv.fr"


def office_mail(msgid: str, rcpt: str = BRUNO, subject: str = "Note") -> bytes:
    return (f"From: Alice Martin <{ALICE}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{msgid}@interieur.gouv.fr>\r\n\r\n"
            f"Texte {MARKER} en clair au bureau ({msgid}).\r\n").encode()


def mailbox(g, address: str) -> list[Path]:
    d = g.home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


def message_ids(g, address: str) -> Counter:
    """How many times each Message-ID sits in the mailbox (the outer headers carry it)."""
    ids = Counter()
    for f in mailbox(g, address):
        ids[str(email.message_from_bytes(f.read_bytes()).get("Message-ID", "")).strip("<> ")] += 1
    return ids


def states(home, qid: str) -> list[str]:
    return [r["state"] for r in queue_rows(home, qid)]


def check_read(reader: Path, path: Path, signer_home: Path, signer_uid: str) -> None:
    """The recipient decrypts it and the signature is the sending domain's gateway key's."""
    res = run_cli(reader, "read", "--json", str(path))
    out = json.loads(res.stdout)
    assert res.exit_code == 0, out
    r = out[0]
    assert r["encrypted"] and r["decrypted"] and r["signature"] == "valid", r
    assert MARKER in r["body"]
    keys = json.loads(ok(run_cli(signer_home, "keys", "list", "--json")).stdout)
    assert r["signer"] in {k["fingerprint"] for k in keys if signer_uid in k["addresses"]}


def trust_domain_key(reader: Path, gateway) -> None:
    key = ok(run_cli(gateway.home, "keys", "export", f"gateway@{gateway.domain}")).stdout_bytes
    ok(run_cli(reader, "keys", "import", "-", input=key))


# --- SQLite federation shared by the restart, next-hop-down and bounce tests ------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a, b = homes[A], homes[B]
    bruno = person(tmp, BRUNO, b, "Bruno Petit")
    return {"a": a, "b": b, "bruno": bruno, "tmp": tmp}


def test_mail_queued_across_restarts_is_delivered_once(fed):
    """Both gateways stopped with mail in the queue; after a restart it arrives exactly once."""
    a, b = fed["a"], fed["b"]
    with Running(a):  # justice's gateway is down: the first try fails and the mail stays queued
        qid = office_send(a.relay, ALICE, [BRUNO], office_mail("restart-1"))
        wait_for(lambda: any(r["attempts"] >= 1 for r in queue_rows(a.home, qid)), what="a first try")
    rows = queue_rows(a.home, qid)   # both stopped: the operator sees it waiting
    assert [r["state"] for r in rows] == ["queued"] and rows[0]["last_error"], rows
    assert message_ids(b, BRUNO)["restart-1@interieur.gouv.fr"] == 0
    with Running(a, b):
        wait_for(lambda: states(a.home, qid) == ["delivered"], what="delivery after restart")
        wait_for(lambda: message_ids(b, BRUNO)["restart-1@interieur.gouv.fr"], what="the mailbox")
    assert message_ids(b, BRUNO)["restart-1@interieur.gouv.fr"] == 1
    assert len([r for r in audit_records(a.home, "delivered") if r["fields"]["message_id"] == qid]) == 1


def test_next_hop_down_defers_then_delivers(fed):
    """A member gateway that is down: deferred with the reason, retried, delivered once it is up."""
    a, b, bruno = fed["a"], fed["b"], fed["bruno"]
    with Running(a):
        qid = office_send(a.relay, ALICE, [BRUNO], office_mail("down-1"))
        rows = wait_for(lambda: [r for r in queue_rows(a.home, qid) if r["attempts"] >= 2],
                        what="two failed tries")
        assert rows[0]["state"] == "queued" and "connection failed" in rows[0]["last_error"], rows
        deferred = [r for r in audit_records(a.home, "deferred") if r["fields"]["message_id"] == qid]
        assert deferred and deferred[0]["fields"]["rcpt_domain"] == B
        with Running(b):
            wait_for(lambda: states(a.home, qid) == ["delivered"], what="delivery once justice is up")
            files = wait_for(lambda: [f for f in mailbox(b, BRUNO) if b"<down-1@" in f.read_bytes()],
                             what="the mailbox")
    assert len(files) == 1
    trust_domain_key(bruno, a)
    check_read(bruno, files[0], a.home, f"gateway@{A}")


def test_permanent_refusal_bounces_headers_only_dsn_to_sender(fed):
    """The next hop answers 550 (no key for the recipient): bounced, and a headers-only DSN reaches alice."""
    a, b = fed["a"], fed["b"]
    before = len(mailbox(a, ALICE))
    with Running(a, b):
        qid = office_send(a.relay, ALICE, [NOKEY], office_mail("bounce-1", rcpt=NOKEY))
        wait_for(lambda: states(a.home, qid) == ["bounced"], what="the bounce")
        dsns = wait_for(lambda: mailbox(a, ALICE)[before:], what="the DSN in alice's mailbox")
    assert len(dsns) == 1
    raw = dsns[0].read_bytes()
    assert MARKER.encode() not in raw and b"en clair" not in raw   # never the body
    dsn = email.message_from_bytes(raw, policy=policy.compat32)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["In-Reply-To"] == "<bounce-1@interieur.gouv.fr>"
    parts = {p.get_content_type(): p for p in dsn.get_payload()}
    assert set(parts) == {"text/plain", "message/delivery-status", "text/rfc822-headers"}
    headers = parts["text/rfc822-headers"].get_payload()
    assert "Message-ID: <bounce-1@interieur.gouv.fr>" in headers and f"To: {NOKEY}" in headers
    assert "\r\n\r\n" not in headers.strip() and "\n\n" not in headers.strip()  # headers, nothing after
    report = parts["message/delivery-status"].as_string()
    assert f"Final-Recipient: rfc822; {NOKEY}" in report and "Action: failed" in report
    assert "Status: 5.1.1" in report and "Diagnostic-Code: smtp; 550" in report
    # Recorded: bounced (with a DSN), the DSN queued with the null sender and delivered locally.
    bounced = [r for r in audit_records(a.home, "bounced") if r["fields"]["message_id"] == qid]
    assert len(bounced) == 1 and bounced[0]["fields"]["dsn"] is True
    assert audit_records(a.home, "dsn_queued")
    assert any(r["sender"] == "" and r["recipient"] == ALICE and r["state"] == "delivered"
               for r in queue_rows(a.home))
    assert any(r["fields"].get("rule") == "crypto" for r in audit_records(b.home, "refused"))


# --- PostgreSQL ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_two_gateways_end_to_end_on_postgresql(tmp_path):
    """The office flow of test_gateway_e2e with both gateways' queues, keys and audit in PostgreSQL."""
    with pg_schemas("a", "b") as urls:
        _, homes = federation(tmp_path, database_urls={A: urls["a"], B: urls["b"]},
                              trusted=OFFICE + "/32")
        a, b = homes[A], homes[B]
        bruno = person(tmp_path, BRUNO, b, "Bruno Petit")
        assert f'url = "{urls["b"]}"' in (b.home / "securemail.toml").read_text()
        with Running(a, b):
            qid = office_send(a.relay, ALICE, [BRUNO], office_mail("pg-1", subject=f"Office {MARKER}"))
            files = wait_for(lambda: mailbox(b, BRUNO), what="delivery")
            wait_for(lambda: states(a.home, qid) == ["delivered"], what="the queue to settle")
        assert len(files) == 1
        trust_domain_key(bruno, a)
        check_read(bruno, files[0], a.home, f"gateway@{A}")
        assert MARKER.encode() not in files[0].read_bytes()
        _assert_in_postgres(urls["a"], qid)
        assert "audit log intact" in ok(run_cli(b.home, "audit", "verify")).stdout


def _assert_in_postgres(url: str, qid: str) -> None:
    """The queue row the CLI showed really is in the gateway's PostgreSQL schema."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT state FROM deliveries WHERE message_id = :m"), {"m": qid}).all()
    finally:
        engine.dispose()
    assert [r[0] for r in got] == ["delivered"]


N_MESSAGES = 60


@pytest.mark.postgres
def test_two_serve_processes_on_one_database_deliver_each_message_once(tmp_path):
    """Two ``securemail serve`` processes share one PostgreSQL queue: every message arrives exactly once."""
    with pg_schemas("shared") as urls:
        _, homes = federation(tmp_path, database_urls={A: urls["shared"]}, trusted=OFFICE + "/32")
        a1, b = homes[A], homes[B]
        a2 = second_node(a1, tmp_path / "gw-interieur-2")
        person(tmp_path, BRUNO, b, "Bruno Petit")
        nodes = [Serve(a1), Serve(a2)]
        try:
            with Running(b):
                for n in nodes:
                    n.start()

                def send_half(i: int) -> list[str]:
                    node = (a1, a2)[i]
                    with smtplib.SMTP("127.0.0.1", node.relay, source_address=(OFFICE, 0), timeout=60) as s:
                        return [office_send(node.relay, ALICE, [BRUNO], office_mail(f"pair-{k}"), client=s)
                                for k in range(i, N_MESSAGES, 2)]
                with ThreadPoolExecutor(2) as pool:
                    qids = [q for half in pool.map(send_half, (0, 1)) for q in half]
                assert len(set(qids)) == N_MESSAGES

                def settled():
                    rows = [r for r in queue_rows(a1.home) if r["message_id"] in set(qids)]
                    return len(rows) == N_MESSAGES and all(r["state"] == "delivered" for r in rows)
                wait_for(settled, 120, "every delivery to settle", every=0.5)
                wait_for(lambda: sum(message_ids(b, BRUNO).values()) >= N_MESSAGES, 60,
                         "justice's mailbox", every=0.5)
                codes = [n.stop() for n in nodes]
                assert codes == [0, 0], [n.output() for n in nodes]
                wait_for(lambda: not [r for r in queue_rows(b.home) if r["state"] == "queued"], 30,
                         "justice's own queue to drain")
        finally:
            for n in nodes:
                n.stop()
        got = message_ids(b, BRUNO)
        want = Counter({f"pair-{k}@interieur.gouv.fr": 1 for k in range(N_MESSAGES)})
        assert got == want, {m: c for m, c in (got - want).items()} or sorted(want - got)
        delivered = [r for r in audit_records(a1.home, "delivered") if r["fields"]["message_id"] in set(qids)]
        assert len(delivered) == N_MESSAGES
        owners = Counter(r["fields"]["owner"] for r in delivered)
        assert len(owners) == 2, f"one process delivered everything: {dict(owners)}"  # both workers claimed
        assert "audit log intact" in ok(run_cli(a1.home, "audit", "verify")).stdout
