"""Two gateways end to end over loopback: end-to-end mail, office mail encrypted by the gateway, refusals."""

from __future__ import annotations

import json
import smtplib

import pytest

from tests.conftest import run_cli

from tests.support import Running, federation, ok, person, wait_for
from .refusal_helpers import client_context

MARKER = "PLAINTEXT-MARKER-7f3a"
OFFICE = "127.0.0.3"


def maildir_files(gw, address):
    d = gw.home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


def read_json(home, path):
    res = run_cli(home, "read", "--json", str(path))
    return res.exit_code, json.loads(res.stdout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fed")
    # The office MTA is 127.0.0.3; gateways reach each other from 127.0.0.1 (not trusted).
    _, homes = federation(tmp, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    alice = person(tmp, "alice@interieur.gouv.fr", a, "Alice Martin")
    bruno = person(tmp, "bruno@justice.gouv.fr", b, "Bruno Petit")
    ok(run_cli(a.home, "gateway", "user", "add", "alice@interieur.gouv.fr", "--password-file",
               str(_pw(tmp))))
    received = []  # every DATA justice's gateway accepted, exactly as it arrived

    def spy(gw):
        if gw.config.domains == ("justice.gouv.fr",):
            orig = gw.pipeline.accept

            async def accept(env, listener):
                received.append(env)
                return await orig(env, listener)
            gw.pipeline.accept = accept

    with Running(a, b, wrap=spy) as running:
        yield {"a": a, "b": b, "alice": alice, "bruno": bruno, "tmp": tmp, "received": received,
               "running": running}


def _pw(tmp):
    p = tmp / "pw"
    p.write_text("correct horse battery\n")
    return p


def test_end_to_end_notice_sent_and_read(fed):
    a, b, alice, bruno, tmp = fed["a"], fed["b"], fed["alice"], fed["bruno"], fed["tmp"]
    cert = ok(run_cli(bruno, "keys", "export", "bruno@justice.gouv.fr")).stdout_bytes
    ok(run_cli(alice, "keys", "import", "-", input=cert))
    cert = ok(run_cli(alice, "keys", "export", "alice@interieur.gouv.fr")).stdout_bytes
    ok(run_cli(bruno, "keys", "import", "-", input=cert))
    body = tmp / "body.txt"
    body.write_text(f"Monsieur le ministre, {MARKER} e2e.\n")
    before = len(maildir_files(b, "bruno@justice.gouv.fr"))
    ok(run_cli(alice, "send", "--from", "alice@interieur.gouv.fr", "--to", "bruno@justice.gouv.fr",
               "--subject", "Note e2e", "--body-file", str(body), "--server", f"127.0.0.1:{a.submission}",
               "--starttls", "--cafile", str(a.cert), "--username", "alice@interieur.gouv.fr",
               "--password-file", str(_pw(tmp))), "send")
    files = wait_for(lambda: maildir_files(b, "bruno@justice.gouv.fr")[before:], what="delivery")
    code, out = read_json(bruno, files[0])
    assert code == 0, out
    r = out[0]
    assert r["encrypted"] and r["decrypted"] and r["signature"] == "valid"
    assert r["subject"] == "Note e2e" and MARKER in r["body"]
    alice_fpr = json.loads(ok(run_cli(alice, "keys", "list", "--json")).stdout)
    assert r["signer"] in {k["fingerprint"] for k in alice_fpr if k["secret"]}


def test_office_plain_mail_is_encrypted_by_the_gateway(fed):
    a, b, bruno = fed["a"], fed["b"], fed["bruno"]
    before = len(maildir_files(b, "bruno@justice.gouv.fr"))
    n_recv = len(fed["received"])
    msg = (f"From: Alice Martin <alice@interieur.gouv.fr>\r\nTo: bruno@justice.gouv.fr\r\n"
           f"Subject: Office {MARKER}\r\nReceived: from office-pc.interieur.lan (10.1.2.3)\r\n"
           f"Message-ID: <office-1@interieur.gouv.fr>\r\n\r\nTexte {MARKER} en clair au bureau.\r\n")
    with smtplib.SMTP("127.0.0.1", a.relay, source_address=(OFFICE, 0), timeout=30) as s:
        s.sendmail("alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"], msg.encode())
    files = wait_for(lambda: maildir_files(b, "bruno@justice.gouv.fr")[before:], what="delivery")
    # Nothing in clear between the gateways: what justice received carries no marker, no Received.
    got = fed["received"][n_recv:]
    assert got and all(MARKER.encode() not in e.data for e in got)
    assert all(b"office-pc.interieur.lan" not in e.data for e in got)
    assert all(e.tls for e in got)
    # Signed by interieur's gateway key: the reader knows it as a federation member key.
    domain_key = ok(run_cli(a.home, "keys", "export", "gateway@interieur.gouv.fr")).stdout_bytes
    ok(run_cli(bruno, "keys", "import", "-", input=domain_key))
    code, out = read_json(bruno, files[0])
    assert code == 0, out
    r = out[0]
    assert r["encrypted"] and r["decrypted"] and r["signature"] == "valid"
    gw_keys = json.loads(ok(run_cli(a.home, "keys", "list", "--json")).stdout)
    assert r["signer"] in {k["fingerprint"] for k in gw_keys if "gateway@interieur.gouv.fr" in k["addresses"]}
    assert r["subject"] == f"Office {MARKER}" and MARKER in r["body"]
    assert "office-pc.interieur.lan" not in json.dumps(r)


def test_received_ciphertext_decrypts_with_the_domain_key(fed):
    """What crossed for the office mail was encrypted to justice's domain key, and only readable with it."""
    crossed = [e for e in fed["received"] if b"<office-1@interieur.gouv.fr>" in e.data]
    assert len(crossed) == 1
    path = fed["tmp"] / "crossed.eml"
    path.write_bytes(crossed[0].data)
    code, out = read_json(fed["b"].home, path)  # the gateway home holds the domain secret key
    assert code == 0 and out[0]["decrypted"] and MARKER in out[0]["body"], out
    code, out = read_json(fed["alice"], path)   # anyone else: refused, nothing shown
    assert code == 1 and out[0]["error"] and MARKER not in json.dumps(out)


def test_plain_mail_from_untrusted_source_is_refused(fed):
    a = fed["a"]
    msg = b"From: x@interieur.gouv.fr\r\nTo: bruno@justice.gouv.fr\r\nSubject: s\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", a.relay, source_address=("127.0.0.2", 0), timeout=30) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("x@interieur.gouv.fr", ["bruno@justice.gouv.fr"], msg)
    code, text = e.value.recipients["bruno@justice.gouv.fr"]
    assert code == 554 and b"5.7.1 Relay access denied" in text


def test_plaintext_from_member_gateway_is_refused(fed):
    """A member gateway (here: a client posing as one) must not hand over plaintext."""
    b = fed["b"]
    msg = b"From: carole@interieur.gouv.fr\r\nTo: bruno@justice.gouv.fr\r\nSubject: s\r\n\r\nclear\r\n"
    with smtplib.SMTP("127.0.0.1", b.relay, source_address=("127.0.0.2", 0), timeout=30) as s:
        s.starttls(context=client_context(fed["a"]))  # with interieur's own gateway certificate
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("carole@interieur.gouv.fr", ["bruno@justice.gouv.fr"], msg)
    # plaintext is refused before any DKIM work (issue 10, finding 4): no DKIM refusal first
    assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1 Plaintext between member")


def test_audit_log_records_decisions_and_verifies(fed):
    a = fed["a"]
    res = ok(run_cli(a.home, "audit", "show", "--json"))
    kinds = {r["kind"] for r in json.loads(res.stdout)}
    assert {"accepted", "refused", "delivered"} <= kinds
    assert "audit log intact" in ok(run_cli(a.home, "audit", "verify")).stdout
    assert MARKER not in res.stdout
