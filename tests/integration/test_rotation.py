"""Key and certificate rotation with mail flowing both ways: not one message refused (issue 14).

Two gateways run (in this process, with their crypto worker and delivery processes); the office MTA
of each sends a message to the other ministry every ~50 ms, without a pause, while both rotate, for
each kind in turn (OpenPGP domain keys, DKIM keys, TLS certificates): ``gateway rotate`` on both →
``federation entry`` → the authority signs → both install (the overlap manifest: new and retiring) →
the new key is in use once ``keys.switch_after`` has passed → entries again → the authority signs →
both install (the closing manifest: new only) → ``gateway retire`` on both. ``retire`` before the
closing manifest is refused. Every message is accepted (250) at the office relay, crosses encrypted
(the differential check judges each body too), is accepted by the other gateway first time (no
deferral, no bounce, no refusal in either audit log), DKIM passes and the domain key's signature is
valid on every delivered copy, and both the old and the new keys were seen doing it.
"""

from __future__ import annotations

import email
import json
import re
import smtplib
import ssl
import threading
import time
import tomllib
from dataclasses import dataclass, field

import pytest

from securemail.crypto.tlspin import der_pin

from tests.support import (OFFICE, Running, audit_records, federation, install_manifest, ok, person,
                           run_cli, wait_for)

A, B = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO = f"alice@{A}", f"bruno@{B}"
MARKER = "ROTATION-PLAINTEXT-5c1e"
SWITCH_AFTER = 3  # seconds: both gateways install a manifest well within this


@dataclass
class Sender:
    """The office MTA of one ministry: a message every ``every`` seconds until stopped."""
    port: int
    sender: str
    rcpt: str
    every: float = 0.05
    accepted: list[str] = field(default_factory=list)   # Message-IDs answered 250
    refused: list[str] = field(default_factory=list)    # anything else, with its reply

    def run(self, stop: threading.Event) -> None:
        client, n = None, 0
        while not stop.wait(self.every):
            n += 1
            mid = f"<rot-{self.sender[0]}-{n}@{self.sender.split('@')[1]}>"
            msg = (f"From: {self.sender}\r\nTo: {self.rcpt}\r\nSubject: n{n}\r\nMessage-ID: {mid}\r\n\r\n"
                   f"Note {n}: {MARKER}\r\n").encode()
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, source_address=(OFFICE, 0), timeout=60)
                client.sendmail(self.sender, [self.rcpt], msg)
                self.accepted.append(mid)
            except smtplib.SMTPResponseException as e:
                self.refused.append(f"{mid}: {e.smtp_code} {e.smtp_error!r}")
            except smtplib.SMTPException as e:
                self.refused.append(f"{mid}: {e!r}")
                client = None
        if client is not None:
            client.quit()


def delivered(g, address: str) -> list[email.message.Message]:
    d = g.home / "Maildir" / address / "new"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(d.iterdir())] if d.exists() else []


def shown_pin(port: int) -> str:
    """The pin of the certificate a relay shows on STARTTLS now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.starttls(context=ctx)
        return der_pin(s.sock.getpeercert(binary_form=True))


def config(g) -> dict:
    return tomllib.loads(g.config.read_text())


def resign(tmp, authority, homes, fpr) -> dict:
    """Every gateway's entry to the authority, a new serial signed, installed on both; the manifest."""
    for d, g in homes.items():
        (tmp / f"{d}.json").write_text(ok(run_cli(g.home, "federation", "entry"), "entry").stdout)
        ok(run_cli(authority, "federation", "add", "--entry", str(tmp / f"{d}.json")), "federation add")
    ok(run_cli(authority, "federation", "sign", "--output", str(tmp / "federation.json")), "sign")
    for g in homes.values():
        install_manifest(g.home, tmp, fpr)
    return json.loads((tmp / "federation.json").read_text())["manifest"]


@pytest.fixture
def world(tmp_path):
    authority, homes = federation(tmp_path, (A, B), trusted=OFFICE + "/32",
                                  tune={"switch_after": f'"{SWITCH_AFTER}s"'})
    person(tmp_path, ALICE, homes[A])   # each gateway re-encrypts to its own user's key;
    person(tmp_path, BRUNO, homes[B])   # the other one encrypts to the domain key in the manifest
    fpr = json.loads(ok(run_cli(authority, "keys", "list", "--json")).stdout)[0]["fingerprint"]
    received = []  # (receiving domain, envelope) of every DATA a gateway took from the other one

    def spy(gw):
        orig = gw.pipeline.accept

        async def accept(env, listener):
            if env.peer_ip != OFFICE:
                received.append((gw.config.domains[0], env))
            return await orig(env, listener)
        gw.pipeline.accept = accept
    with Running(homes[A], homes[B], wrap=spy):
        yield tmp_path, authority, homes, fpr, received


def _rotate(kind: str, tmp, authority, homes, fpr) -> dict:
    """The whole sequence for ``kind`` on both gateways; what was current before and after."""
    before = {d: _current(kind, g) for d, g in homes.items()}
    for g in homes.values():
        out = ok(run_cli(g.home, "gateway", "rotate", kind), f"rotate {kind}").stdout
        assert "next" in out
    nxt = {d: _next(kind, g) for d, g in homes.items()}
    overlap = resign(tmp, authority, homes, fpr)
    for m in overlap["members"]:  # the new key listed, the old one retiring (DKIM: both selectors)
        assert _listed(kind, m) == {"openpgp": [nxt[m["domain"]], before[m["domain"]]],
                                    "tls": [nxt[m["domain"]], before[m["domain"]]],
                                    "dkim": sorted(before[m["domain"]] + nxt[m["domain"]])}[kind]
    for g in homes.values():  # members may still lag: the old key cannot go yet
        res = run_cli(g.home, "gateway", "retire", kind)
        assert res.exit_code == 1 and "still" in res.output and "federation entry" in res.output, res.output
    time.sleep(SWITCH_AFTER + 0.5)
    if kind == "tls":
        for d, g in homes.items():
            assert wait_for(lambda: shown_pin(g.relay) == nxt[d], 10, "the new certificate shown")
    closing = resign(tmp, authority, homes, fpr)
    for m in closing["members"]:
        assert "retiring" not in m and _listed(kind, m) == ([nxt[m["domain"]]] if kind != "dkim"
                                                            else nxt[m["domain"]])
    for g in homes.values():
        ok(run_cli(g.home, "gateway", "retire", kind), f"retire {kind}")
    after = {d: _current(kind, g) for d, g in homes.items()}
    assert after == nxt and all(_next(kind, g) in (None, []) for g in homes.values())
    return {"before": before, "after": after}


def _current(kind: str, g):
    c = config(g)
    if kind == "openpgp":
        return c["keys"]["openpgp"][g.domain]
    if kind == "dkim":
        return sorted(d["selector"] for d in c["keys"]["dkim"] if not d.get("next"))
    return der_pin_of(g.home / c["tls"]["cert"])


def _next(kind: str, g):
    c = config(g)
    if kind == "openpgp":
        return c["keys"].get("openpgp_next", {}).get(g.domain)
    if kind == "dkim":
        return sorted(d["selector"] for d in c["keys"]["dkim"] if d.get("next"))
    return der_pin_of(g.home / c["tls"]["next_cert"]) if "next_cert" in c["tls"] else None


def _listed(kind: str, member: dict):
    from securemail.crypto.keys import load_key
    if kind == "openpgp":
        keys = [member["openpgp_key"], member.get("retiring", {}).get("openpgp_key")]
        return [load_key(k.encode()).fingerprint for k in keys if k]
    if kind == "tls":
        return [p for p in (member["tls_pin"], member.get("retiring", {}).get("tls_pin")) if p]
    return sorted(d["selector"] for d in member["dkim"])


def der_pin_of(path) -> str:
    from securemail.membership import tls_pin_of_cert
    return tls_pin_of_cert(path.read_bytes())


def test_rotating_every_key_refuses_and_defers_nothing(world, capsys):
    tmp, authority, homes, fpr, received = world
    senders = [Sender(homes[A].relay, ALICE, BRUNO), Sender(homes[B].relay, BRUNO, ALICE)]
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in senders]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        wait_for(lambda: all(len(s.accepted) >= 5 for s in senders), 60, "mail flowing")
        changes = {kind: _rotate(kind, tmp, authority, homes, fpr) for kind in ("openpgp", "dkim", "tls")}
        counts = [len(s.accepted) for s in senders]
        wait_for(lambda: all(len(s.accepted) >= n + 5 for s, n in zip(senders, counts)), 60,
                 "mail flowing after the rotations")
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    elapsed = time.monotonic() - started
    sent = sum(len(s.accepted) + len(s.refused) for s in senders)
    refused = [r for s in senders for r in s.refused]
    assert not refused, refused[:5]
    # every message reached its reader, once
    want = {BRUNO: set(senders[0].accepted), ALICE: set(senders[1].accepted)}
    got = {}
    for g, address in ((homes[B], BRUNO), (homes[A], ALICE)):
        wait_for(lambda: len(delivered(g, address)) >= len(want[address]), 120, f"delivery to {address}")
        got[address] = delivered(g, address)
        assert sorted(m["Message-ID"] for m in got[address]) == sorted(want[address])
    # nothing refused, deferred or bounced anywhere; no plaintext crossed
    for g in homes.values():
        bad = [r for r in audit_records(g.home) if r["kind"] in ("refused", "deferred", "bounced", "held")]
        assert not bad, bad[:3]
    assert len(received) == sent
    assert all(MARKER.encode() not in env.data and env.tls for _, env in received)
    # DKIM passed and the domain key's signature was valid on every copy, by the old and new keys
    for address, messages in got.items():
        for m in messages:
            assert "dkim=pass" in m["Authentication-Results"], m["Authentication-Results"]
            assert re.search(r"\bsignature=valid\b", m["Securemail-Status"]), m["Securemail-Status"]
    for d, address in ((A, BRUNO), (B, ALICE)):
        signers = {re.search(r"signer=([0-9A-F]+)", m["Securemail-Status"]).group(1) for m in got[address]}
        assert {changes["openpgp"]["before"][d], changes["openpgp"]["after"][d]} <= signers
        seen = {env.tls_peer_pin for r, env in received if r != d}
        assert {changes["tls"]["before"][d], changes["tls"]["after"][d]} <= seen
        selectors = {s for r, env in received if r != d
                     for s in re.findall(rb"\bs=([a-z0-9.-]+);", env.data.split(b"\r\n\r\n")[0])}
        assert {*changes["dkim"]["before"][d], *changes["dkim"]["after"][d]} <= {s.decode() for s in selectors}
    with capsys.disabled():
        print(f"\nrotation: {sent} messages sent during the rotation of OpenPGP, DKIM and TLS keys on "
              f"both gateways ({elapsed:.0f} s), refused: {len(refused)}, deferred: 0, delivered: "
              f"{sum(len(v) for v in got.values())}")


def test_rotate_and_retire_refuse_saying_what_is_missing(tmp_path):
    """No gateway running: the commands' own refusals, and the entry they make the gateway send."""
    from securemail.admin.setup import self_signed_cert
    _, homes = federation(tmp_path, (A,), install=[])  # no manifest installed here
    g = homes[A]
    res = run_cli(g.home, "gateway", "retire", "tls")
    assert res.exit_code == 2 and "no tls rotation under way" in res.output
    self_signed_cert("gw.elsewhere.example", tmp_path / "c.pem", tmp_path / "k.pem")
    res = run_cli(g.home, "gateway", "rotate", "tls", "--cert", str(tmp_path / "c.pem"), "--key",
                  str(tmp_path / "k.pem"))
    assert res.exit_code == 2 and "tls name" in res.output and "gw.interieur.gouv.fr" in res.output
    res = run_cli(g.home, "gateway", "rotate", "dkim", "--cert", str(tmp_path / "c.pem"), "--key",
                  str(tmp_path / "k.pem"))
    assert res.exit_code == 2 and "tls only" in res.output
    old = der_pin_of(g.cert)
    ok(run_cli(g.home, "gateway", "rotate", "tls"), "rotate tls")
    res = run_cli(g.home, "gateway", "rotate", "tls")
    assert res.exit_code == 2 and "under way already" in res.output
    nxt = _next("tls", g)
    key = g.home / config(g)["tls"]["next_key"]
    assert key.stat().st_mode & 0o777 == 0o600 and nxt != old
    entry = json.loads(ok(run_cli(g.home, "federation", "entry")).stdout)[0]
    assert entry["tls_pin"] == nxt and entry["retiring"] == {"tls_pin": old}
    res = run_cli(g.home, "gateway", "retire", "tls")
    assert res.exit_code == 1 and "no federation manifest is installed" in res.output
    checks = json.loads(run_cli(g.home, "gateway", "check", "--json").stdout)["checks"]
    assert any(c["name"] == f"permissions {key.relative_to(g.home)}" and c["ok"] for c in checks)
    ok(run_cli(g.home, "gateway", "rotate", "openpgp"), "rotate openpgp")
    fpr = _next("openpgp", g)
    keys = json.loads(ok(run_cli(g.home, "keys", "list", "--json")).stdout)
    assert any(k["fingerprint"] == fpr and k["secret"] for k in keys)
    entry = json.loads(ok(run_cli(g.home, "federation", "entry")).stdout)[0]
    assert _listed("openpgp", entry) == [fpr, _current("openpgp", g)]
    audit = [r for r in audit_records(g.home) if r["kind"] == "key-rotated"]
    assert [r["fields"]["kind"] for r in audit] == ["tls", "openpgp"], audit


def test_retire_openpgp_waits_for_office_mail_still_encrypted_to_the_old_key(tmp_path):
    """relay mode queues member mail encrypted to the domain key and opens it at delivery: while such
    mail waits, the old key it needs is not removed; once it is gone, retire goes through."""
    from securemail.app import open_home
    from securemail.crypto import message as M
    from securemail.mail.compose import pgp_mime
    from securemail.transform.hops import relay_hop
    authority, homes = federation(tmp_path, (A, B))
    fpr = json.loads(ok(run_cli(authority, "keys", "list", "--json")).stdout)[0]["fingerprint"]
    g = homes[A]
    old = _current("openpgp", g)
    ok(run_cli(g.home, "gateway", "rotate", "openpgp"), "rotate openpgp")
    resign(tmp_path, authority, homes, fpr)                 # the overlap
    resign(tmp_path, authority, homes, fpr)                 # the closing manifest: the new key alone
    core = open_home(g.home)
    try:
        armored = M.encrypt(b"Subject: x\r\n\r\nwaiting\r\n", [(core.keys.get(old), ALICE)])
        body = pgp_mime({"From": BRUNO, "To": ALICE, "Subject": "..."}, armored)
        mid = core.queue().enqueue(BRUNO, [(ALICE, relay_hop("127.0.0.1", 9, decrypt=True))], body)
    finally:
        core.close()
    res = run_cli(g.home, "gateway", "retire", "openpgp")
    assert res.exit_code == 1 and "1 message(s) queued for the office" in res.output, res.output
    assert _next("openpgp", g) is not None and _current("openpgp", g) == old   # nothing changed
    ok(run_cli(g.home, "queue", "delete", mid), "queue delete")
    out = ok(run_cli(g.home, "gateway", "retire", "openpgp"), "retire openpgp").stdout
    assert f"removed the old OpenPGP key {old}" in out and _next("openpgp", g) is None
    assert old not in {k["fingerprint"] for k in json.loads(ok(run_cli(g.home, "keys", "list", "--json")).stdout)}
    retired = audit_records(g.home, "key-retired")
    assert retired and retired[-1]["fields"]["old"] == {A: old}
