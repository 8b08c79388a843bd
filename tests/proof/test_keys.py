"""Key faults: a recipient key revoked or expired while mail waits; our own keys unreadable or expired.

A recipient key that stops being valid while its mail waits in the queue
must stop that mail before any connection to the next hop: bounced with a
DSN to the sender, never sent. Our own keys: a missing or corrupt TLS or DKIM
key stops ``securemail serve`` at start with one clear line; removing them
while it runs changes nothing (they were read at start, mail stays signed);
our OpenPGP signing key expiring while it runs gives office mail a 4xx, and
nothing is queued or sent unsigned.
"""

from __future__ import annotations

import email
import json
import smtplib
import time
from email import policy

import pytest

from tests.conftest import run_cli
from tests.support import (OFFICE, Running, audit_records, office_send, ok, person, queue_rows,
                           wait_for)

from .figures import FULL
from .leaks import Scan
from .sides import A, ALICE, BRUNO, Receiver, ServeProc, office_mail, probe
from .world import Shifted, mailbox, world

DENIS, CARLA, EMILE = "denis@justice.gouv.fr", "carla@justice.gouv.fr", "emile@justice.gouv.fr"
DAY = 86400.0


def _fpr(home, address: str) -> str:
    keys = json.loads(ok(run_cli(home, "keys", "list", "--json")).stdout)
    return next(k["fingerprint"] for k in keys if address in k["addresses"])


def _import(gateway, home, address: str) -> None:
    cert = ok(run_cli(home, "keys", "export", address)).stdout_bytes
    ok(run_cli(gateway.home, "keys", "import", "-", input=cert), f"import {address}")


@pytest.fixture(scope="module")
def kw(tmp_path_factory):
    """One federation; bruno, denis (2 years) and carla (30 days) known at both gateways, emile (never) at A."""
    tmp = tmp_path_factory.mktemp("keys")
    w = world(tmp, lease_seconds="8")
    _import(w.a, w.bruno, BRUNO)
    w.denis = person(tmp, DENIS, w.b, "Denis Roy")
    _import(w.a, w.denis, DENIS)
    carla = tmp / "person-carla"
    ok(run_cli(carla, "keys", "generate", "--uid", f"Carla Diaz <{CARLA}>", "--no-passphrase", "--expires", "30d"))
    for g in (w.a, w.b):
        _import(g, carla, CARLA)
    w.carla = carla
    emile = tmp / "person-emile"
    ok(run_cli(emile, "keys", "generate", "--uid", f"Emile Blanc <{EMILE}>", "--no-passphrase", "--expires", "never"))
    _import(w.a, emile, EMILE)
    return w


def _dsn_for(w, msgid: str) -> bytes:
    for f in mailbox(w.a, ALICE):
        raw = f.read_bytes()
        if f"<{msgid}@".encode() in raw:
            return raw
    return b""


def _vetoed(w, qid: str) -> list[dict]:
    return [r for r in audit_records(w.a.home, "bounced")
            if r["fields"]["message_id"] == qid and r["fields"]["why"] == "vetoed"]


def _check_veto(w, qid: str, msgid: str, receiver: Receiver, figures, name: str, logs, probes) -> None:
    raw = _dsn_for(w, msgid)
    report = email.message_from_bytes(raw, policy=policy.compat32).get_payload()[1].as_string()
    scan = Scan()
    scan.dsn(raw)
    scan.wire(receiver.received)
    scan.replies(line for got in probes for line in got)
    scan.log(logs.text(), "gateway log")
    vetoed = _vetoed(w, qid)
    figures.record(group="keys", name=name, backend="sqlite", runs=1, acked=1, delivered=0, duplicated=0,
                   lost=0, bounced=1, sent_to_next_hop=receiver.accepted[msgid] + len(
                       [e for e in receiver.events if e[1] == msgid]),
                   dsn_status="5.7.0" if "Status: 5.7.0" in report else report, probes=len(probes),
                   probes_ok=sum(1 for got in probes if [g[:3] for g in got] == ["250", "250", "221"]),
                   **scan.figures())
    assert [r["state"] for r in queue_rows(w.a.home, qid)] == ["bounced"]
    assert len(vetoed) == 1 and vetoed[0]["fields"]["dsn"] is True, vetoed
    assert not [e for e in receiver.events if e[1] == msgid], "sent to the next hop after all"
    assert "Status: 5.7.0" in report and "Action: failed" in report, report
    assert scan.count == 0, scan.leaks


def test_recipient_key_revoked_while_mail_waits_is_never_sent(kw, figures, logs):
    """Queued for denis while justice is down; denis revokes his key; A learns it; B comes back."""
    w, msgid, receiver = kw, "revoked-1", Receiver()
    with Running(w.a):
        qid = office_send(w.a.relay, ALICE, [DENIS], office_mail(msgid, DENIS))
        wait_for(lambda: [r for r in queue_rows(w.a.home, qid) if r["attempts"] >= 1 and r["last_error"]],
                 60, "a first failed try")
        fpr = _fpr(w.denis, DENIS)
        ok(run_cli(w.denis, "keys", "revoke", fpr, "--reason", "compromised"), "keys revoke")
        _import(w.a, w.denis, DENIS)   # the revoked certificate reaches A's key store
        states = json.loads(ok(run_cli(w.a.home, "keys", "list", "--json")).stdout)
        assert [k["state"] for k in states if DENIS in k["addresses"]] == ["revoked"]
        with Running(w.b, wrap=receiver.install):
            wait_for(lambda: _vetoed(w, qid), 60, "the veto")
            wait_for(lambda: _dsn_for(w, msgid), 60, "the DSN to alice")
            _, got = probe(w.a.relay)
    _check_veto(w, qid, msgid, receiver, figures, "recipient key revoked while queued", logs, [got])


def test_recipient_key_expired_while_mail_waits_is_never_sent(kw, figures, logs):
    """Queued for carla (key valid 30 days) while justice is down; 31 days pass; B comes back."""
    w, msgid, receiver = kw, "expired-1", Receiver()
    w.a.tune(give_up_after="1e9")
    try:
        with Shifted(w.a) as a, Running(w.b, wrap=receiver.install):
            receiver.mode = Receiver.TEMP                # the next hop defers it for now
            qid = office_send(w.a.relay, ALICE, [CARLA], office_mail(msgid, CARLA))
            wait_for(lambda: [e for e in receiver.events if e[1] == msgid], 60, "a first deferred try")
            a.offset = 31 * DAY
            receiver.mode = Receiver.OK
            receiver.events.clear()
            receiver.received.clear()
            wait_for(lambda: _vetoed(w, qid), 60, "the veto")
            wait_for(lambda: _dsn_for(w, msgid), 60, "the DSN to alice")
            _, got = probe(w.a.relay)
    finally:
        w.a.tune(give_up_after="60")
    _check_veto(w, qid, msgid, receiver, figures, "recipient key expired while queued", logs, [got])


# --- our own keys -----------------------------------------------------------------------
def _start_fails(w, name: str, damage) -> dict:
    path, restore = damage(w.a.home)
    try:
        code, err = ServeProc(w.a).run_once()
    finally:
        restore(path)
    err = err.strip()
    return {"case": name, "exit": code, "message": err.splitlines()[-1] if err else "(kept running)",
            # serve logs its start at INFO (the manifest it read); the failure itself is one line
            "lines": len([line for line in err.splitlines() if not line.startswith("INFO ")]),
            "traceback": "Traceback" in err}


def _removed(rel: str):
    def damage(home):
        path = home / rel
        data = path.read_bytes()
        path.unlink()
        return path, lambda p: p.write_bytes(data)
    return damage


def _corrupted(rel: str):
    def damage(home):
        path = home / rel
        data = path.read_bytes()
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        return path, lambda p: p.write_bytes(data)
    return damage


def _unconfigured_dkim(home):
    cfg = home / "securemail.toml"
    text = cfg.read_text()
    cfg.write_text(text.split("[[keys.dkim]]", 1)[0])
    return cfg, lambda p: p.write_text(text)


START_CASES = {
    "TLS key removed": _removed("tls/key.pem"),
    "DKIM key corrupt": _corrupted(f"dkim/{A}.sm-ed25519.pem"),
    "TLS key corrupt": _corrupted("tls/key.pem"),
    "TLS certificate removed": _removed("tls/cert.pem"),
    "DKIM key removed": _removed(f"dkim/{A}.sm-rsa.pem"),
    "DKIM key not configured": _unconfigured_dkim,
}


def test_own_key_or_certificate_unreadable_at_start_is_one_clear_error(kw, figures):
    cases = list(START_CASES.items()) if FULL else list(START_CASES.items())[:2] + [list(START_CASES.items())[-1]]
    results = [_start_fails(kw, name, damage) for name, damage in cases]
    for r in results:
        figures.record(group="keys", name=f"at start: {r['case']}", backend="sqlite", exit=r["exit"],
                       message=r["message"], traceback=r["traceback"])
    for r in results:
        assert r["exit"] == 1 and not r["traceback"] and r["lines"] == 1, r
        assert r["message"].startswith("securemail: ") and any(
            w in r["message"] for w in ("TLS", "DKIM")), r


def test_own_keys_removed_while_running_mail_stays_signed(kw, figures, logs):
    """Read at start: removing the TLS and DKIM key files later changes nothing; mail is still signed."""
    w, receiver = kw, Receiver()
    with Running(w.b, wrap=receiver.install), Running(w.a):
        damaged = [_removed("tls/key.pem")(w.a.home), *(_removed(f"dkim/{A}.{s}.pem")(w.a.home)
                                                        for s in ("sm-ed25519", "sm-rsa"))]
        try:
            ids = [f"runtime-{i}" for i in range(3)]
            qids = [office_send(w.a.relay, ALICE, [BRUNO], office_mail(m)) for m in ids]
            wait_for(lambda: all(receiver.accepted[m] for m in ids), 60, "delivery")
            okp, got = probe(w.a.relay)
        finally:
            for path, restore in damaged:
                restore(path)
    got_raw = [r for r in receiver.received if any(f"<{m}@".encode() in r for m in ids)]
    signed = [r for r in got_raw if r.count(b"DKIM-Signature:") == 2]
    scan = Scan()
    scan.wire(receiver.received)
    scan.log(logs.text(), "gateway log")
    figures.record(group="keys", name="TLS and DKIM key files removed while running", backend="sqlite",
                   runs=1, acked=len(qids), delivered=sum(1 for m in ids if receiver.accepted[m]),
                   duplicated=0, lost=sum(1 for m in ids if not receiver.accepted[m]),
                   signed=len(signed), probes=1, probes_ok=int(okp), **scan.figures())
    assert len(signed) == len(got_raw) == 3 and okp, (len(signed), got)
    assert scan.count == 0, scan.leaks


def test_own_signing_key_expired_while_running_gives_4xx_and_sends_nothing(kw, figures, logs):
    """The domain key (730 days) has expired: office mail is deferred with 4xx, nothing is queued."""
    w, receiver = kw, Receiver()
    before = {r["message_id"] for r in queue_rows(w.a.home)}
    with Running(w.b, wrap=receiver.install), Shifted(w.a, offset=731 * DAY):
        with smtplib.SMTP("127.0.0.1", w.a.relay, source_address=(OFFICE, 0), timeout=60) as s:
            s.ehlo()
            s.mail(ALICE)
            s.rcpt(EMILE)
            code, text = s.data(office_mail("own-expired-1", EMILE))
        okp, got = probe(w.a.relay)
        time.sleep(1)
    reply = f"{code} {text.decode()}"
    new = [r for r in queue_rows(w.a.home) if r["message_id"] not in before]
    scan = Scan()
    scan.replies([reply, *got])
    scan.log(logs.text(), "gateway log")
    figures.record(group="keys", name="own OpenPGP signing key expired while running", backend="sqlite",
                   reply=reply, queued=len(new), sent_to_next_hop=len(receiver.events), probes=1,
                   probes_ok=int(okp), **scan.figures())
    assert 400 <= code < 500, reply
    assert new == [] and receiver.events == [] and okp, (new, receiver.events, got)
    assert scan.count == 0, scan.leaks
