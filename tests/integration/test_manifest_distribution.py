"""Manifest distribution and expiry with real servers: interieur's running gateway fetches the authority's
manifest from a real HTTPS server (aiohttp, its own self-signed certificate, pinned by ``url_pin``).

A serial that moves forward is installed within one ``fetch_interval``; a rollback, a manifest changed
after signing and a server with another key are refused and audited, the installed manifest untouched.
Past ``expires``, mail to and from members is deferred (451 at intake; queued member mail deferred at
delivery) and nothing reaches justice; a fresh manifest from the URL resumes delivery both ways.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from datetime import datetime

import pytest

from securemail.audit import AuditLog
from securemail.config_ops import ManifestFetch
from securemail.db import make_engine
from securemail.manifestfetch import FAILED, ManifestFetcher
from securemail.schema import create_schema
from tests.support import (OFFICE, Running, Serve, StaticHTTPS, audit_records, federation, office_send, ok,
                           person, queue_rows, run_cli, wait_for)

A, J = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO = f"alice@{A}", f"bruno@{J}"
INTERVAL = 1.0   # [federation] fetch_interval of interieur's gateway, seconds
PATH = "/federation.json"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distribution")
    authority, homes = federation(tmp, trusted=OFFICE + "/32", tune={"cpu_workers": "0"})
    a, b = homes[A], homes[J]
    person(tmp, ALICE, a)
    person(tmp, BRUNO, b)
    a.tune(give_up_after="600", fetch_interval=str(INTERVAL))
    with StaticHTTPS(tmp) as server:
        server.files[PATH] = (tmp / "federation.json").read_bytes()  # serial 1, installed already
        text = a.config.read_text().replace(
            "[federation]\n", f'[federation]\nurl = "{server.url(PATH)}"\nurl_pin = "{server.pin}"\n')
        a.config.write_text(text)
        justice = Serve(b).start()
        try:
            with Running(a, cpu_workers=0):
                yield {"tmp": tmp, "authority": authority, "a": a, "b": b, "server": server, "justice": justice}
        finally:
            justice.stop()


def installed(gw) -> dict:
    return json.loads((gw.home / "federation.json").read_bytes())["manifest"]


def sign(fed, name: str, *args: str) -> bytes:
    out = fed["tmp"] / name
    ok(run_cli(fed["authority"], "federation", "sign", "--output", str(out), *args), f"sign {name}")
    return out.read_bytes()


def refusals(gw, words: str) -> list[dict]:
    return [r for r in audit_records(gw.home, "manifest-fetch-refused") if words in r["fields"]["reason"]]


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            "Note de service.\r\n").encode()


def maildir(gw, address: str) -> list:
    d = gw.home / "Maildir" / address / "new"
    return sorted(d.iterdir()) if d.exists() else []


def test_1_a_forward_serial_is_installed_within_one_interval(fed):
    a, server = fed["a"], fed["server"]
    assert installed(a)["serial"] == 1
    server.files[PATH] = sign(fed, "f2.json")
    start = time.monotonic()
    wait_for(lambda: installed(a)["serial"] == 2, 10 * INTERVAL, "serial 2 from the URL")
    assert time.monotonic() - start < INTERVAL + 3.0  # one interval, and the time to verify it
    [change] = [r for r in audit_records(a.home, "manifest-change") if r["fields"]["serial"] == 2]
    assert change["fields"]["source"] == server.url(PATH) and change["fields"]["previous_serial"] == 1
    assert change["fields"]["expires"] == installed(a)["expires"]


def test_2_a_rollback_from_the_url_is_refused_and_audited(fed):
    a, server = fed["a"], fed["server"]
    server.files[PATH] = (fed["tmp"] / "federation.json").read_bytes()  # serial 1 again
    wait_for(lambda: refusals(a, "serial 1 is older than the installed serial 2"), 10 * INTERVAL, "refusal")
    hits = server.hits[PATH]
    wait_for(lambda: server.hits[PATH] >= hits + 2, 10 * INTERVAL, "two more fetches")
    assert installed(a)["serial"] == 2
    assert len(refusals(a, "older than the installed serial")) == 1  # once per reason in a row


def test_3_a_manifest_changed_after_signing_is_refused_and_audited(fed):
    a, server = fed["a"], fed["server"]
    doc = json.loads(sign(fed, "f3.json"))
    doc["manifest"]["members"] = [m for m in doc["manifest"]["members"] if m["domain"] != J]  # drop justice
    server.files[PATH] = json.dumps(doc).encode()
    wait_for(lambda: refusals(a, "not signed by the federation authority"), 10 * INTERVAL, "refusal")
    assert installed(a)["serial"] == 2


def test_4_a_server_with_another_key_is_refused(fed, tmp_path):
    """The pin is checked before anything is sent: the fetch fails, is audited once, installs nothing."""
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    create_schema(engine)
    audit, server = AuditLog(engine), fed["server"]
    before = server.hits[PATH]
    fetcher = ManifestFetcher(ManifestFetch(server.url(PATH), "00" * 32), tmp_path / "f.json", None,
                              lambda fpr: None, audit)
    for _ in range(2):
        got = asyncio.run(fetcher.fetch_once())
        assert (got.outcome, got.reason) == (FAILED, "the server certificate does not match federation.url_pin")
    assert server.hits[PATH] == before and not (tmp_path / "f.json").exists()
    assert [(r.kind, r.fields["reason"]) for r in audit.records()] == [
        ("manifest-fetch-failed", "the server certificate does not match federation.url_pin")]
    engine.dispose()


def _smtp_data(port: int, sender: str, rcpt: str, msg: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, source_address=(OFFICE, 0), timeout=60) as s:
        s.ehlo()
        s.mail(sender)
        s.rcpt(rcpt)
        code, text = s.data(msg)
        return code, text.decode()


def test_5_expiry_defers_member_mail_and_renewal_resumes_it(fed):
    a, b, server, justice = fed["a"], fed["b"], fed["server"], fed["justice"]
    justice.stop()  # so that mail queued for justice waits in interieur's queue
    valid_for = 10
    server.files[PATH] = sign(fed, "f4.json", "--valid-for", f"{valid_for}s")
    wait_for(lambda: installed(a)["serial"] == 4, 10 * INTERVAL, "serial 4")
    expires = installed(a)["expires"]
    check = run_cli(a.home, "gateway", "check").output
    assert "WARNING federation expiry serial 4 expires" in check and "(fewer than 7)" in check
    qid = office_send(a.relay, ALICE, [BRUNO], message(ALICE, BRUNO, "queued-before-expiry"))
    wait_for(lambda: time.time() > _epoch(expires) + 0.5, valid_for + 5, "expiry")
    code, text = _smtp_data(a.relay, ALICE, BRUNO, message(ALICE, BRUNO, "sent-after-expiry"))
    assert (code, text) == (451, "4.7.0 federation manifest expired; member mail deferred, try again later")
    justice.start()
    wait_for(lambda: queue_rows(a.home, qid)[0]["last_error"] ==
             "federation manifest expired; waiting for a fresh one", 30, "a deferral by the manifest check")
    code, text = _smtp_data(b.relay, BRUNO, ALICE, message(BRUNO, ALICE, "from-justice"))
    assert code == 250, text  # justice's manifest is fresh: it takes the mail, interieur will defer it
    wait_for(lambda: [r for r in audit_records(a.home, "refused")
                      if r["fields"]["rule"] == "manifest_current" and r["fields"]["sender_domain"] == J],
             30, "justice's delivery deferred by interieur")
    assert "PROBLEM federation expiry serial 4 expired" in run_cli(a.home, "gateway", "check").output
    assert maildir(b, BRUNO) == [] and maildir(a, ALICE) == []
    server.files[PATH] = sign(fed, "f5.json")  # renewal: 30 days
    wait_for(lambda: installed(a)["serial"] == 5, 10 * INTERVAL, "serial 5")
    wait_for(lambda: maildir(b, BRUNO), 30, "the queued mail delivered to justice")
    wait_for(lambda: maildir(a, ALICE), 60, "justice's mail delivered to interieur")
    assert queue_rows(a.home, qid)[0]["state"] == "delivered"
    code, text = _smtp_data(a.relay, ALICE, BRUNO, message(ALICE, BRUNO, "sent-after-renewal"))
    assert code == 250, text
    wait_for(lambda: len(maildir(b, BRUNO)) == 2, 30, "mail after renewal delivered")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
