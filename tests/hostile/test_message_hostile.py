"""Hostile messages against the real gateway: headers, From tricks, MIME, armor, DKIM, the corpus.

Messages cross the running gateway A either from the office (127.0.0.3, the
trusted network) or from justice's gateway (127.0.0.1, STARTTLS, DKIM-signed
with justice's own key files, so that each case breaks exactly one rule).
Each case asserts the exact reply, that a refusal queued nothing, and records
the reply in the proof table; the conftest checks after each that the gateway
still answers a normal session.
"""

from __future__ import annotations

import base64
import re
import time
import tomllib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securemail.crypto.dkim import DkimSigner
from securemail.smtp.replies import HEADERS_TOO_BIG
from tests.integration.refusal_helpers import transact
from tests.support import queue_rows, wait_for

from . import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, crlf

pytestmark = pytest.mark.timeout(300)

PLAINTEXT = ("550 5.7.1 Plaintext between member domains is refused: "
             "message is not properly OpenPGP encrypted")
ONE_FROM = "550 5.7.1 Message must have exactly one valid From address"
LOOP = "554 5.4.6 Too many Received headers: mail loop"
DKIM_REFUSED = "550 5.7.20 No valid DKIM signature aligned with the From domain"
NON_MEMBER_SENDER = "550 5.7.1 Sender domain is not a member of the federation"
MALFORMED_MIME = "550 5.6.0 Malformed MIME structure (unparseable or nested too deeply)"
LINE_TOO_LONG = "550 5.6.0 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)"
QUEUED = re.compile(r"250 2\.0\.0 OK: queued as [0-9a-f]{32}(\+[0-9]+)?")
_ARMOR = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\r?\n", re.S)


# --- sending -----------------------------------------------------------------------------------
def from_member(gw, data: bytes, *, sender: str = BRUNO, rcpts=(ALICE,), sign: bool = True):
    """(reply, messages added to A's queue) for ``data`` sent as justice's gateway would."""
    before = gw.queued()
    r = transact(gw.a.relay, sender, list(rcpts), gw.signed(data) if sign else crlf(data),
                 source=GATEWAY_PEER, starttls=True, cert=gw.j)
    return f"{r.code} {r.text}", gw.queued() - before


def from_office(gw, data: bytes, *, sender: str = ALICE, rcpts=(BRUNO,)):
    before = gw.queued()
    r = transact(gw.a.relay, sender, list(rcpts), crlf(data), source=OFFICE, starttls=False)
    return f"{r.code} {r.text}", gw.queued() - before


def refused(reply: str, added: set, expected: str) -> None:
    assert reply == expected
    assert added == set(), f"a refused message was queued: {added}"


def accepted(reply: str, added: set) -> None:
    assert QUEUED.fullmatch(reply), reply
    assert len(added) >= 1


# --- building messages -------------------------------------------------------------------------
def plain(frm: str = BRUNO, to: str = ALICE, *, headers: str = "", body: str = "Texte.\r\n",
          subject: str = "Hostile") -> bytes:
    return (f"From: {frm}\r\nTo: <{to}>\r\nSubject: {subject}\r\n{headers}"
            f"Message-ID: <{time.monotonic_ns()}@hostile.test>\r\n\r\n{body}").encode()


def armored_of(gw) -> bytes:
    return _ARMOR.search(crlf(gw.encrypted)).group(0)


def pgp_mime(payload: bytes, *, frm: str = f"Bruno Petit <{BRUNO}>", to: str = ALICE,
             boundary: str = "hostile-b1", headers: str = "", transfer: str = "7bit",
             close: bool = True, ctype: str | None = None) -> bytes:
    """A PGP/MIME message (RFC 3156) around ``payload``, as a member's client writes it."""
    ctype = ctype or f'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="{boundary}"'
    head = (f"From: {frm}\r\nTo: <{to}>\r\nSubject: ...\r\n{headers}Message-ID: <{time.monotonic_ns()}"
            f"@justice.gouv.fr>\r\nMIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\n").encode()
    b = boundary.encode()
    return (head + b"--" + b + b"\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--" + b
            + b"\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
            + transfer.encode() + b"\r\n\r\n" + payload + b"\r\n" + (b"--" + b + b"--\r\n" if close else b""))


# --- 1. header loops ------------------------------------------------------------------------------
def received(n: int) -> str:
    return "".join(f"Received: from hop{i}.example.org by hop{i + 1}.example.org; "
                   f"Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(n))


def test_31_received_headers_from_the_office_is_a_loop(gw, record):
    reply, added = from_office(gw, plain(ALICE, BRUNO, headers=received(31)))
    record("header loop: 31 Received (office)", reply)
    refused(reply, added, LOOP)


def test_31_received_headers_from_a_member_is_a_loop(gw, record):
    reply, added = from_member(gw, pgp_mime(armored_of(gw), headers=received(31)))
    record("header loop: 31 Received (member gateway)", reply)
    refused(reply, added, LOOP)


def test_30_received_headers_are_still_accepted(gw, record):
    reply, added = from_office(gw, plain(ALICE, ALICE, headers=received(30)), rcpts=(ALICE,))
    record("30 Received headers, the limit (office)", reply)
    accepted(reply, added)


# --- 2. From: two, none, several, encoded-word tricks, display names -------------------------------
FROM_TRICKS = {
    "two From headers": (f"<{BRUNO}>\r\nFrom: <boss@justice.gouv.fr>", ONE_FROM),
    "two addresses in one From": (f"<{BRUNO}>, <{ALICE}>", ONE_FROM),
    "From group with one address": (f"Ministere: <{BRUNO}>;", "accept"),
    "From empty group": ("Ministere:;", ONE_FROM),
    "From without address": ("Bruno Petit", ONE_FROM),
    "Mailsploit: encoded-word addr-spec": (
        "=?utf-8?b?" + base64.b64encode(f"{ALICE}\0".encode()).decode() + "?=@justice.gouv.fr", ONE_FROM),
    "Mailsploit: encoded '@' in the local part": ("alice=?utf-8?q?=40?=interieur.gouv.fr@justice.gouv.fr", ONE_FROM),
    "Mailsploit: encoded-word display name": (
        "=?utf-8?b?" + base64.b64encode(ALICE.encode()).decode() + f"?= <{BRUNO}>", "accept"),
    "Mailsploit: encoded NUL in the display name": (
        f"=?utf-8?q?alice=40interieur.gouv.fr=00?= <{BRUNO}>", "accept"),
    "display name with another member's address": (f'"{ALICE}" <{BRUNO}>', "accept"),
}


@pytest.mark.parametrize("name", FROM_TRICKS)
def test_from_tricks_from_a_member(gw, record, name):
    """Judged by the one real address: a From that is not exactly one plain address is refused."""
    frm, expected = FROM_TRICKS[name]
    reply, added = from_member(gw, pgp_mime(armored_of(gw), frm=frm))
    record(f"From: {name} (member gateway)", reply)
    if expected == "accept":  # the address is bruno@justice.gouv.fr, DKIM-aligned: the name is only a name
        accepted(reply, added)
    else:
        refused(reply, added, expected)


@pytest.mark.parametrize("name", FROM_TRICKS)
def test_from_tricks_from_the_office(gw, record, name):
    frm, expected = FROM_TRICKS[name]
    frm = frm.replace(BRUNO, ALICE).replace("justice.gouv.fr", "interieur.gouv.fr")
    reply, added = from_office(gw, plain(frm, BRUNO))
    record(f"From: {name} (office)", reply)
    if expected == "accept":  # sent, encrypted and signed as interieur.gouv.fr: the name is only a name
        accepted(reply, added)
    else:
        refused(reply, added, expected)


def test_display_name_of_our_domain_from_a_non_member_is_refused(gw, record):
    reply, added = from_member(gw, plain(f'"{ALICE}" <mallory@example.org>'), sender="mallory@example.org",
                               sign=False)
    record("display-name spoofing of our domain from a non-member", reply)
    refused(reply, added, NON_MEMBER_SENDER)


def test_our_own_address_from_a_member_gateway_is_refused(gw, record):
    reply, added = from_member(gw, pgp_mime(armored_of(gw), frm=f"<{ALICE}>"), sender=ALICE)
    record("our own domain in From, from a member gateway", reply)
    refused(reply, added, "550 5.7.1 Mail from this domain must come from its own office")


# --- 3. MIME nested thousands deep, huge headers, broken boundaries -----------------------------------
def nested(depth: int, frm: str = ALICE, to: str = BRUNO) -> bytes:
    out = [f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: deep\r\nMIME-Version: 1.0\r\n".encode()]
    for i in range(depth):
        out.append(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode())
    out.append(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    out.extend(f"--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return b"".join(out)


@pytest.mark.parametrize("depth", [101, 300, 5000])
@pytest.mark.parametrize("to", [BRUNO, ALICE], ids=["to-member", "to-own-domain"])
def test_mime_nested_deep_from_the_office_is_refused_for_good(gw, record, to, depth):
    """Refused with a 5xx: a 4xx would have the office MTA retry it forever (it was 451)."""
    started = time.monotonic()
    reply, added = from_office(gw, nested(depth, to=to), rcpts=(to,))
    record(f"MIME nested {depth} deep (office, {'member' if to == BRUNO else 'own domain'})", reply)
    assert time.monotonic() - started < 60
    refused(reply, added, MALFORMED_MIME)


def test_mime_nested_100_deep_from_the_office_is_accepted(gw, record):
    reply, added = from_office(gw, nested(100))
    record("MIME nested 100 deep, the limit (office)", reply)
    accepted(reply, added)


def test_mime_nested_5000_deep_from_a_member(gw, record):
    reply, added = from_member(gw, nested(5000, frm=BRUNO, to=ALICE))
    record("MIME nested 5000 deep (member gateway)", reply)
    refused(reply, added, PLAINTEXT)


def big_headers(total: int = 100 * 1024) -> str:
    line = "X-Filler: " + "f" * 88 + "\r\n"
    return line * (total // len(line))


def folded_subject(total: int = 100 * 1024) -> str:
    return "X-Long: start\r\n" + " continued-" + "\r\n continued-".join("x" * 66 for _ in range(total // 80)) + "\r\n"


@pytest.mark.parametrize("shape", ["many-fields", "one-folded-field"])
def test_100_kb_header_section(gw, record, shape):
    """Over limits.header_bytes (64 KiB): the header block is refused whole, never cut (issue 10, 10)."""
    headers = big_headers() if shape == "many-fields" else folded_subject()
    assert len(headers) > 95 * 1024
    reply, added = from_office(gw, plain(ALICE, BRUNO, headers=headers))
    record(f"100 KB header section, {shape} (office)", reply)
    refused(reply, added, HEADERS_TOO_BIG)
    reply, added = from_member(gw, pgp_mime(armored_of(gw), headers=headers))
    record(f"100 KB header section, {shape} (member gateway)", reply)
    refused(reply, added, HEADERS_TOO_BIG)


@pytest.mark.parametrize("shape", ["many-fields", "one-folded-field"])
def test_60_kb_header_section(gw, record, shape):
    """Under limits.header_bytes: accepted from the office and from a member."""
    headers = big_headers(60 * 1024) if shape == "many-fields" else folded_subject(60 * 1024)
    assert len(headers) > 55 * 1024
    reply, added = from_office(gw, plain(ALICE, BRUNO, headers=headers))
    record(f"60 KB header section, {shape} (office)", reply)
    accepted(reply, added)
    reply, added = from_member(gw, pgp_mime(armored_of(gw), headers=headers))
    record(f"60 KB header section, {shape} (member gateway)", reply)
    accepted(reply, added)


BROKEN_BOUNDARIES = {
    "boundary never used": dict(ctype='multipart/encrypted; protocol="application/pgp-encrypted"; boundary="nowhere"'),
    "no boundary parameter": dict(ctype='multipart/encrypted; protocol="application/pgp-encrypted"'),
    "empty boundary": dict(ctype='multipart/encrypted; protocol="application/pgp-encrypted"; boundary=""'),
    "boundary of 200 characters": dict(boundary="b" * 200),
    "closing boundary missing": dict(close=False),
}
LENIENT = {"boundary of 200 characters", "closing boundary missing"}  # every part is there, all encrypted


@pytest.mark.parametrize("name", BROKEN_BOUNDARIES)
def test_broken_boundaries_from_a_member(gw, record, name):
    reply, added = from_member(gw, pgp_mime(armored_of(gw), **BROKEN_BOUNDARIES[name]))
    record(f"broken MIME boundary: {name} (member gateway)", reply)
    if name in LENIENT:  # as lenient as MUAs are: the parts found are PGP/MIME, nothing is in clear
        accepted(reply, added)
    else:
        refused(reply, added, PLAINTEXT)


@pytest.mark.parametrize("name", BROKEN_BOUNDARIES)
def test_broken_boundaries_from_the_office(gw, record, name):
    """From the office, anything not encrypted is encrypted by the gateway: still never in clear."""
    msg = pgp_mime(b"Texte en clair.", frm=f"<{ALICE}>", to=BRUNO, **BROKEN_BOUNDARIES[name])
    reply, added = from_office(gw, msg)
    record(f"broken MIME boundary: {name} (office)", reply)
    accepted(reply, added)


# --- 4. armor: bad CRC, no END, 10 MB lines --------------------------------------------------------
def _bad_crc(armor: bytes) -> bytes:
    return re.sub(rb"\r\n=([A-Za-z0-9+/]{4})\r\n", lambda m: b"\r\n=" + (b"AAAA" if m.group(1) != b"AAAA" else b"BBBB")
                  + b"\r\n", armor)


def _ten_mb_line() -> bytes:
    return (b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + base64.b64encode(b"\x84" * (7_500_000)) + b"\r\n"
            b"-----END PGP MESSAGE-----\r\n")


ARMOR_CASES = {
    "bad CRC": lambda a: (_bad_crc(a), "7bit", PLAINTEXT),
    "no END line": lambda a: (a.replace(b"-----END PGP MESSAGE-----", b""), "7bit", PLAINTEXT),
    "data after the checksum": lambda a: (a.replace(b"-----END", b"AAAA\r\n-----END"), "7bit", PLAINTEXT),
    "10 MB line on the wire": lambda a: (_ten_mb_line(), "7bit", LINE_TOO_LONG),
    "10 MB armor line inside base64": lambda a: (base64.encodebytes(_ten_mb_line()).replace(b"\n", b"\r\n"),
                                                 "base64", PLAINTEXT),
}


@pytest.mark.parametrize("name", ARMOR_CASES)
def test_broken_armor_from_a_member(gw, record, name):
    payload, transfer, expected = ARMOR_CASES[name](armored_of(gw))
    assert payload != armored_of(gw)
    started = time.monotonic()
    reply, added = from_member(gw, pgp_mime(payload, transfer=transfer))
    record(f"armor: {name} (member gateway)", reply)
    refused(reply, added, expected)
    assert time.monotonic() - started < 60


# --- 5. DKIM: l=, expired x=, 1024-bit RSA -----------------------------------------------------------
def _rsa_pem_of(gw) -> bytes:
    """justice's RSA DKIM key as PKCS#1 PEM, the form dkimpy reads."""
    path = next((gw.j.home / "dkim").glob("*sm-rsa*.pem"))
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _dkimpy(msg: bytes, selector: bytes, pem: bytes, **kw) -> bytes:
    sig = dkim.sign(msg, selector, JUSTICE.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"message-id", b"content-type"], **kw)
    return sig + msg


def _one_kilobit() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


DKIM_CASES = {
    "l= body length": lambda gw, m: _dkimpy(m, b"sm-rsa", _rsa_pem_of(gw), length=True),
    "l= body length, content appended": lambda gw, m: _dkimpy(m, b"sm-rsa", _rsa_pem_of(gw), length=True)
    + b"Appended by an attacker.\r\n",
    "expired x=": lambda gw, m: DkimSigner(JUSTICE, _keys(gw), clock=lambda: time.time() - 7200,
                                           expire_after=600).sign(m),
    "1024-bit RSA key (selector not in the manifest)": lambda gw, m: _dkimpy(m, b"rsa1024", _one_kilobit()),
}


def _keys(gw) -> list[tuple[str, bytes, str]]:
    """justice's real DKIM keys, as its gateway home holds them."""
    config = tomllib.loads((gw.j.home / "securemail.toml").read_text())
    return [(k["selector"], (gw.j.home / k["private_key"]).read_bytes(), k["algorithm"])
            for k in config["keys"]["dkim"] if k["domain"] == JUSTICE]


@pytest.mark.parametrize("name", DKIM_CASES)
def test_weak_dkim_from_a_member_is_refused(gw, record, name):
    msg = crlf(pgp_mime(armored_of(gw)))
    data = DKIM_CASES[name](gw, msg)
    assert data.startswith(b"DKIM-Signature:")
    reply, added = from_member(gw, data, sign=False)
    record(f"DKIM {name} (member gateway)", reply)
    refused(reply, added, DKIM_REFUSED)


def test_dkimpy_signature_with_the_real_key_is_accepted(gw, record):
    """The control for the l= case: the same dkimpy signature without l= passes."""
    reply, added = from_member(gw, _dkimpy(crlf(pgp_mime(armored_of(gw))), b"sm-rsa", _rsa_pem_of(gw)),
                               sign=False)
    record("DKIM control: dkimpy signature with the member's real key", reply)
    accepted(reply, added)


# --- 6. the shared corpus, both ways -----------------------------------------------------------------
def _corpus_entries(corpus, adversarial: bool):
    for m in corpus["mail"]:
        if not adversarial or m["gateway"] != "accept" or m.get("expect") != "show":
            yield m


def test_corpus_from_a_member_gateway(gw, corpus, record):
    """Every message of the corpus, DKIM-signed by its sender's domain, with the reply the manifest says."""
    for m in corpus["mail"]:
        sender = m["sender"]
        if sender.split("@")[1] != JUSTICE:
            continue  # only justice's keys are in this federation
        data = (corpus["dir"] / m["file"]).read_bytes()
        reply, added = from_member(gw, data, sender=sender)
        record(f"corpus {m['file']} (member gateway; manifest says {m['gateway']})", reply)
        if m["gateway"] == "reject":
            refused(reply, added, PLAINTEXT)
        elif m["gateway"] == "accept":
            accepted(reply, added)
        else:
            assert QUEUED.fullmatch(reply) or (reply == PLAINTEXT and not added), reply


def test_corpus_from_the_office_to_our_own_domain(gw, corpus, record):
    """Office to a colleague: accepted and stored (encrypted to alice if it was not); the gateway survives."""
    for m in _corpus_entries(corpus, adversarial=True):
        data = (corpus["dir"] / m["file"]).read_bytes()
        reply, added = from_office(gw, data, sender=m["sender"], rcpts=(ALICE,))
        record(f"corpus {m['file']} (office to own domain)", reply)
        accepted(reply, added)


def test_a_good_message_still_goes_through(gw, record):
    reply, added = from_member(gw, pgp_mime(armored_of(gw)))
    record("control: encrypted, DKIM-signed mail from a member gateway", reply)
    accepted(reply, added)
    [queued_as] = added
    wait_for(lambda: all(r["state"] == "delivered" for r in queue_rows(gw.a.home, queued_as)), 30,
             "the delivery to alice's Maildir")
