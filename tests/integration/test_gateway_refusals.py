"""What interieur.gouv.fr's running gateway refuses, with the exact reply, and that nothing is queued.

One federation of four member domains (interieur, justice, armees, culture),
set up with the real CLI; only interieur's gateway (A) runs. The test plays the
other members' gateways: it connects from 127.0.0.1 (not a trusted network),
uses STARTTLS showing the member's own TLS certificate and DKIM-signs with the
member's own key files from its home, so that each case breaks exactly one rule. The shared corpus crosses the same way.
"""

from __future__ import annotations

import base64
import json
import smtplib
from pathlib import Path

import pytest

from securemail.crypto.dkim import DkimSigner, generate_dkim_key
from tests.conftest import run_cli

from tests.support import Running, federation, ok
from tests.support.corpus import case_files

from .refusal_helpers import (GATEWAY_PEER, OFFICE, STRANGER, Enrolled, Reply, crlf, enrol, queued_messages, reply,
                              transact)

A, JUSTICE, ARMEES, CULTURE = "interieur.gouv.fr", "justice.gouv.fr", "armees.gouv.fr", "culture.gouv.fr"
ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusals")
    authority, homes = federation(tmp, domains=(A, JUSTICE, ARMEES, CULTURE), trusted=OFFICE + "/32")
    a, b = homes[A], homes[JUSTICE]
    eml = enrol(tmp, a, b, ALICE, BRUNO, PASSWORD)
    with Running(a):
        yield Enrolled(tmp, homes, eml, authority=authority, own=A)


@pytest.fixture
def nothing_queued(fed):
    """Asserts, after the test, that the test added no message to A's queue."""
    before = queued_messages(fed.a)
    yield
    assert queued_messages(fed.a) - before == set(), "a refused message was queued"


def plain(sender: str = BRUNO, to: str = ALICE, subject: str = "En clair") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <refusal-test@{sender.split('@')[1]}>\r\n\r\nTexte en clair.\r\n").encode()


def expect(r: Reply, code: int, enhanced: str, words: str = "", stage: str = "DATA") -> None:
    assert (r.stage, r.code, r.enhanced) == (stage, code, enhanced), str(r)
    assert words.lower() in r.text.lower(), str(r)


# --- the control: a correct member transaction is accepted ---------------------------------------
def test_encrypted_signed_mail_from_member_gateway_is_accepted(fed):
    before = queued_messages(fed.a)
    r = transact(fed.a.relay, BRUNO, [ALICE], fed.signed(fed.encrypted), cert=fed.homes[JUSTICE])
    assert (r.code, r.enhanced) == (250, "2.0.0"), str(r)
    assert len(queued_messages(fed.a) - before) == 1


# --- 1. plaintext between members ---------------------------------------------------------------
def test_plaintext_from_member_gateway_is_refused(fed, nothing_queued):
    r = transact(fed.a.relay, BRUNO, [ALICE], fed.signed(plain()), cert=fed.homes[JUSTICE])
    expect(r, 550, "5.7.1", "Plaintext between member domains is refused")


def test_member_mail_without_starttls_is_refused(fed, nothing_queued):
    r = transact(fed.a.relay, BRUNO, [ALICE], fed.signed(fed.encrypted), starttls=False)
    expect(r, 530, "5.7.10", "TLS is required")


# --- 2. DKIM ------------------------------------------------------------------------------------
def _rogue(selector: str) -> DkimSigner:
    key = generate_dkim_key("ed25519")
    return DkimSigner(JUSTICE, [(selector, key.private_pem, "ed25519")])


def _after_signing(fed, change) -> bytes:
    return change(fed.signed(fed.encrypted))


DKIM_CASES = {
    "unsigned": lambda fed: crlf(fed.encrypted),
    "key-not-in-manifest": lambda fed: _rogue("rogue").sign(crlf(fed.encrypted)),
    "other-key-same-selector": lambda fed: _rogue("sm-ed25519").sign(crlf(fed.encrypted)),
    "body-tampered": lambda fed: _after_signing(
        fed, lambda m: m + b"Epilogue added in transit.\r\n"),
    "signed-header-tampered": lambda fed: _after_signing(
        fed, lambda m: m.replace(b"\r\nSubject: ...\r\n", b"\r\nSubject: Urgent\r\n", 1)),
    "signed-by-another-member": lambda fed: fed.signed(fed.encrypted, domain=ARMEES),
}


@pytest.mark.parametrize("case", DKIM_CASES)
def test_bad_dkim_is_refused(fed, nothing_queued, case):
    data = DKIM_CASES[case](fed)
    if case == "signed-header-tampered":
        assert b"Subject: Urgent" in data
    r = transact(fed.a.relay, BRUNO, [ALICE], data, cert=fed.homes[JUSTICE])
    expect(r, 550, "5.7.20", "No valid DKIM signature aligned with the From domain")


# --- 3. envelope sender and From ----------------------------------------------------------------
def test_envelope_sender_and_from_mismatch_is_refused(fed, nothing_queued):
    """DKIM passes and aligns with From (armees signs), but the envelope says justice."""
    data = fed.signed(plain(sender="x@armees.gouv.fr"), domain=ARMEES)
    r = transact(fed.a.relay, BRUNO, [ALICE], data, cert=fed.homes[JUSTICE])
    expect(r, 550, "5.7.1", "Envelope sender and From domains differ")


# --- 4. relay -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rcpt", [BRUNO, "someone@example.org"])
def test_relay_from_untrusted_network_is_refused(fed, nothing_queued, rcpt):
    r = transact(fed.a.relay, "x@example.org", [rcpt], plain("x@example.org", rcpt),
                 source=STRANGER, starttls=False)
    expect(r, 554, "5.7.1", "Relay access denied", stage="RCPT")


def _raw_rcpt(port: int, path: str, source: str) -> Reply:
    """RCPT TO:<path> exactly as written (smtplib's rcpt() would re-quote it)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as s:
        s.ehlo("client.example.org")
        code, text = s.mail("x@example.org")
        assert code == 250, (code, text)
        code, text = s.docmd("RCPT", f"TO:<{path}>")
        return reply("RCPT", code, text)


RELAY_TRICKS = ["u%someone.example.org@interieur.gouv.fr",     # percent hack
                "@gw.interieur.gouv.fr:u@someone.example.org",  # source route
                '"u@someone.example.org"@interieur.gouv.fr',    # quoted local part
                "someone.example.org!u@interieur.gouv.fr"]      # bang path


@pytest.mark.parametrize("source", [STRANGER, OFFICE])
@pytest.mark.parametrize("path", RELAY_TRICKS)
def test_relay_address_tricks_are_refused(fed, nothing_queued, path, source):
    r = _raw_rcpt(fed.a.relay, path, source)
    expect(r, 501, "5.1.3", "Bad recipient address syntax", stage="RCPT")


# --- 5. submission: STARTTLS, then AUTH ---------------------------------------------------------
def _auth_plain() -> str:
    return "PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()


def _submission(fed, *, tls: bool) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", fed.a.submission, source_address=(GATEWAY_PEER, 0), timeout=30)
    s.ehlo("laptop.example.org")
    if tls:
        assert s.starttls()[0] == 220
        s.ehlo("laptop.example.org")
    return s


def test_submission_without_auth_is_refused(fed, nothing_queued):
    with _submission(fed, tls=True) as s:
        assert s.has_extn("auth")
        r = reply("MAIL", *s.docmd("MAIL", f"FROM:<{ALICE}>"))
        expect(r, 530, "5.7.0", "Authentication required", stage="MAIL")
        r = reply("RCPT", *s.docmd("RCPT", f"TO:<{BRUNO}>"))
        expect(r, 530, "5.7.0", "Authentication required", stage="RCPT")
        r = reply("DATA", *s.docmd("DATA"))
        expect(r, 530, "5.7.0", "Authentication required", stage="DATA")


def test_submission_auth_before_starttls_is_refused(fed, nothing_queued):
    with _submission(fed, tls=False) as s:
        assert not s.has_extn("auth"), "AUTH advertised in clear"
        r = reply("AUTH", *s.docmd("AUTH", _auth_plain()))
        expect(r, 530, "5.7.0", "Must issue a STARTTLS command first", stage="AUTH")


def test_submission_mail_before_starttls_is_refused(fed, nothing_queued):
    with _submission(fed, tls=False) as s:
        r = reply("MAIL", *s.docmd("MAIL", f"FROM:<{ALICE}>"))
        expect(r, 530, "5.7.0", "Must issue a STARTTLS command first", stage="MAIL")


def test_submission_auth_after_starttls_is_accepted(fed):
    """The control for the three above: the same credentials work once TLS is up."""
    with _submission(fed, tls=True) as s:
        code, text = s.docmd("AUTH", _auth_plain())
        assert code == 235 and text.startswith(b"2.7.0"), (code, text)
        assert s.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250


# --- 6. the federation manifest -----------------------------------------------------------------
def _installed(fed) -> bytes:
    return (fed.a.home / "federation.json").read_bytes()


def _install_refused(fed, path: Path, *extra: str):
    before = _installed(fed)
    res = run_cli(fed.a.home, "federation", "install", str(path), *extra)
    assert res.exit_code != 0, res.output
    assert _installed(fed) == before, "the installed manifest changed"
    assert "Traceback" not in res.output
    return res


def _serial(fed) -> int:
    return json.loads(_installed(fed))["manifest"]["serial"]


def test_manifest_signed_by_another_key_is_refused(fed):
    rogue = fed.tmp / "rogue-authority"
    ok(run_cli(rogue, "federation", "init", "--no-passphrase"), "rogue init")
    for d in fed.homes:
        ok(run_cli(rogue, "federation", "add", "--entry", str(fed.tmp / f"{d}.json")), "rogue add")
    out = fed.tmp / "rogue.json"
    for _ in range(_serial(fed) + 1):  # newer than the installed one: only the signature is wrong
        ok(run_cli(rogue, "federation", "sign", "--output", str(out)), "rogue sign")
    res = _install_refused(fed, out)
    assert res.exit_code == 1
    assert "manifest not signed by the federation authority" in res.stderr
    # Naming the rogue key as authority on the command line changes nothing either.
    rogue_fpr = json.loads(ok(run_cli(rogue, "keys", "list", "--json")).stdout)[0]["fingerprint"]
    res = _install_refused(fed, out, "--authority", rogue_fpr)
    assert res.exit_code == 2 and "edit [federation] authority" in res.stderr


@pytest.mark.parametrize("change", ["gateway", "serial"])
def test_manifest_tampered_after_signing_is_refused(fed, change):
    doc = json.loads(_installed(fed))
    m = doc["manifest"]
    m["serial"] += 1
    if change == "gateway":
        j = next(e for e in m["members"] if e["domain"] == JUSTICE)
        j["gateway"] = "203.0.113.66:25"
    path = fed.tmp / f"tampered-{change}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    res = _install_refused(fed, path)
    assert res.exit_code == 1
    assert "manifest not signed by the federation authority" in res.stderr


def test_manifest_older_serial_is_refused(fed):
    old = fed.tmp / "federation.json"
    newer = fed.tmp / "federation-newer.json"
    ok(run_cli(fed.authority, "federation", "sign", "--output", str(newer)), "sign newer")
    ok(run_cli(fed.a.home, "federation", "install", str(newer)), "install newer")
    assert _serial(fed) == json.loads(newer.read_bytes())["manifest"]["serial"] > 1
    res = _install_refused(fed, old)
    assert res.exit_code == 1
    assert f"is older than the installed serial {_serial(fed)}" in res.stderr


# --- 7. the interop corpus (shared or regenerated) crossing from a member gateway ----------------------------------------
@pytest.mark.parametrize("file", case_files())
def test_corpus_message_from_member_gateway(fed, corpus, file):
    entry = next(m for m in corpus["mail"] if m["file"] == file)
    sender = entry["sender"]
    domain = sender.split("@")[1]
    data = fed.signed((corpus["dir"] / file).read_bytes(), domain=domain)
    before = queued_messages(fed.a)
    r = transact(fed.a.relay, sender, [ALICE], data, helo=f"gw.{domain}", cert=fed.homes[domain])
    added = queued_messages(fed.a) - before
    accepted = (r.stage, r.code, r.enhanced) == ("DATA", 250, "2.0.0")
    rejected = (r.stage, r.code, r.enhanced) == ("DATA", 550, "5.7.1")
    assert accepted or rejected, f"{file}: {r}"
    assert len(added) == (1 if accepted else 0), f"{file}: {r}, queued {added}"
    want = entry["gateway"]
    if want == "accept":
        assert accepted, f"{file} ({entry.get('reason', '')}): {r}"
    elif want == "reject":
        assert rejected, f"{file} ({entry.get('reason', '')}): {r}"
    else:
        assert want == "either", want
