"""Member authentication, without gateways: the client-certificate rule, the pin, the TLS handshake
that takes any certificate, oversigned DKIM, and replay records in the queue."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securemail.audit import AuditLog
from securemail.crypto.dkim import DkimSigner, generate_dkim_key, manifest_dnsfunc, verify_dkim
from securemail.crypto.dkim_signing import SIGNED_HEADERS
from securemail.crypto.tlspin import der_pin, spki_sha256
from securemail.db import transaction
from securemail.envelope import Envelope
from securemail.federation import Manifest, Member
from securemail.membership import tls_pin_of_cert
from securemail.policy import encryption, rules
from securemail.policy.facts import gather
from securemail.queue import NewMessage, Queue
from securemail.queue.replay import Seen, admit, message_key, seen_for
from securemail.smtp import replies
from securemail.smtp.peercert import request_client_certificates

OWN_D = ("interieur.gouv.fr",)
J, C = "justice.gouv.fr", "culture.gouv.fr"
MEMBERS = frozenset({J, C})
ENC = encryption.EncryptionCheck(True, "pgp/mime", "", ("ABCDEF0123456789",))


# --- certificates -----------------------------------------------------------------------------
def make_cert(cn: str = "gw.justice.gouv.fr", *, days: int = 30, note: str = "") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed certificate; ``note`` goes into the subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if note:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, note))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2 * abs(days)))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_one_pin_function_for_manifest_delivery_and_sessions():
    pem, _ = make_cert()
    assert spki_sha256(pem) == spki_sha256(der_of(pem)) == der_pin(der_of(pem)) == tls_pin_of_cert(pem)
    assert tls_pin_of_cert(b"Bag Attributes\n" + pem) == der_pin(der_of(pem))  # PEM after a preamble
    assert der_pin(b"garbage") is None and spki_sha256(b"-----BEGIN CERTIFICATE-----\nAA\n") is None


def test_a_der_certificate_is_never_read_as_the_pem_it_carries():
    """An attacker's certificate with justice's whole PEM in a subject field keeps its own pin."""
    justice, _ = make_cert()
    carrier, _ = make_cert(note=justice.decode()[:64])  # what fits in an OU; the point is the parse
    assert der_pin(der_of(carrier)) != der_pin(der_of(justice))
    assert der_pin(der_of(carrier)) == spki_sha256(carrier)


def test_envelope_carries_the_pin_of_the_client_certificate():
    pem, _ = make_cert()
    env = Envelope("b@justice.gouv.fr", ("a@interieur.gouv.fr",), b"x", "127.0.0.1", 25, True,
                   der_of(pem), None, "gw", 0.0)
    assert env.tls_peer_pin == tls_pin_of_cert(pem)
    assert Envelope("", ("a@b.fr",), b"x", "127.0.0.1", 25, True, None, None, "gw", 0.0).tls_peer_pin is None


def test_manifest_pinned_domains():
    members = {d: Member(d, ("gw", 25), pin, b"", ()) for d, pin in
               ((J, "a" * 64), (C, "b" * 64), ("armees.gouv.fr", "a" * 64))}
    m = Manifest(1, "2024-01-01T00:00:00Z", members)
    assert m.pinned_domains("a" * 64) == {J, "armees.gouv.fr"}  # one gateway serving two domains
    assert m.pinned_domains("c" * 64) == frozenset() and m.pinned_domains(None) == frozenset()


# --- the TLS handshake: any client certificate, or none ------------------------------------------
def _handshake(server_ctx: ssl.SSLContext, client_cert: tuple[bytes, bytes] | None, tmp_path) -> bytes | None:
    """The DER certificate the server saw after a real handshake over loopback."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    if client_cert is not None:
        (tmp_path / "c.pem").write_bytes(client_cert[0])
        (tmp_path / "c.key").write_bytes(client_cert[1])
        client.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes | None] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen.append(tls.getpeercert(binary_form=True))
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(socket.create_connection(listener.getsockname()), server_hostname="gw") as s:
        assert s.recv(2) == b"ok"
    t.join(10)
    listener.close()
    return seen[0]


@pytest.fixture
def server_ctx(tmp_path):
    pem, key = make_cert("gw.interieur.gouv.fr")
    (tmp_path / "s.pem").write_bytes(pem)
    (tmp_path / "s.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    return request_client_certificates(ctx)


@pytest.mark.parametrize("days", [30, -1], ids=["valid", "expired"])
def test_any_self_signed_client_certificate_is_taken_and_shown(server_ctx, tmp_path, days):
    cert = make_cert(days=days)
    der = _handshake(server_ctx, cert, tmp_path)
    assert der is not None and der_pin(der) == tls_pin_of_cert(cert[0])


def test_a_client_without_certificate_still_gets_tls(server_ctx, tmp_path):
    assert _handshake(server_ctx, None, tmp_path) is None


def test_a_context_that_requires_certificates_is_refused():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with pytest.raises(Exception, match="cannot take any"):
        request_client_certificates(ctx)


# --- the rule ---------------------------------------------------------------------------------
def env(mail_from="bruno@justice.gouv.fr", frm="bruno@justice.gouv.fr") -> Envelope:
    data = f"From: {frm}\r\nSubject: x\r\nMessage-ID: <1@justice.gouv.fr>\r\n\r\nbody\r\n".encode()
    return Envelope(mail_from, ("alice@interieur.gouv.fr",), data, "192.0.2.7", 2525, True, None, None,
                    "gw", 0.0)


def facts(e: Envelope, cert, *, trusted=False, policy="refuse"):
    return gather(e, listener="relay", trusted=trusted, own_domains=OWN_D, members=MEMBERS, encryption=ENC,
                  dkim_status="pass", dkim_domains=frozenset({J, C}), non_member_policy=policy,
                  cert_domains=None if cert is None else frozenset(cert))


def test_member_cert_comes_right_after_member_tls():
    names = [n for n, _ in rules.CHAIN]
    assert names[names.index("member_tls") + 1] == "member_cert"


@pytest.mark.parametrize("e", [env(), env(mail_from="", frm="mailer-daemon@justice.gouv.fr")],
                         ids=["sender", "bounce"])
def test_member_mail_without_a_certificate_is_refused(e):
    v = rules.evaluate(facts(e, None))
    assert (v.rule, v.reply, v.reason) == ("member_cert", replies.MEMBER_CERT_REQUIRED, "no client certificate")
    assert v.reply.startswith("550 5.7.1 ")


@pytest.mark.parametrize("cert", [(), (C,)], ids=["no-member", "another-member"])
def test_member_mail_with_another_certificate_is_refused(cert):
    v = rules.evaluate(facts(env(), cert))
    assert (v.rule, v.reply) == ("member_cert", replies.MEMBER_CERT_MISMATCH)
    assert v.reason == f"client certificate of {', '.join(cert) or 'no member'}, not {J}"


@pytest.mark.parametrize("cert", [(J,), (J, C)], ids=["its-own", "gateway-of-two-domains"])
def test_member_mail_with_its_gateway_certificate_passes(cert):
    assert rules.evaluate(facts(env(), cert)) is None
    assert rules.member_domain(facts(env(), cert)) == J


def test_office_and_non_member_mail_need_no_certificate():
    office = env(mail_from="alice@interieur.gouv.fr", frm="alice@interieur.gouv.fr")
    assert rules.member_cert(facts(office, None, trusted=True)) is None
    outsider = env(mail_from="x@example.org", frm="x@example.org")
    assert rules.evaluate(facts(outsider, None, policy="allow-plain")) is None
    assert rules.member_domain(facts(outsider, None, policy="allow-plain")) is None


# --- DKIM: every signed header oversigned --------------------------------------------------------
MSG = (b"From: Bruno <bruno@justice.gouv.fr>\r\nTo: alice@interieur.gouv.fr\r\nSubject: ...\r\n"
       b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@justice.gouv.fr>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/encrypted; boundary=b1\r\n\r\n--b1\r\nVersion: 1\r\n--b1--\r\n")


@pytest.fixture(scope="module")
def dkim_pair():
    key = generate_dkim_key("ed25519")
    return (DkimSigner(J, [("sel", key.private_pem, "ed25519")]),
            manifest_dnsfunc({f"sel._domainkey.{J}": key.public_txt}))


@pytest.mark.parametrize("name", [n.decode() for n in SIGNED_HEADERS])
def test_a_signed_header_prepended_later_breaks_the_signature(dkim_pair, name):
    signer, dns = dkim_pair
    signed = signer.sign(MSG)
    assert verify_dkim(signed, dns).status == "pass"
    cut = signed.index(b"\r\nFrom:") + 2  # after the DKIM-Signature header, as a relay would add it
    forged = signed[:cut] + f"{name}: attacker's value\r\n".encode() + signed[cut:]
    assert verify_dkim(forged, dns).status == "fail", name


# --- replay records -----------------------------------------------------------------------------
def test_message_key_is_the_member_and_its_message_ids_or_digest():
    a = message_key(J, ["<1@j>"], b"one")
    assert a == message_key(J.upper(), [" <1@j> "], b"two")  # the bytes do not matter with an ID
    assert a != message_key(C, ["<1@j>"], b"one") and a != message_key(J, ["<2@j>"], b"one")
    assert message_key(J, [], b"one") != message_key(J, [], b"two")
    assert message_key(J, [], b"one") == message_key(J, [], b"one")
    s1, s2 = seen_for((a, 60.0), ["Alice@x"]), seen_for((a, 60.0), ["alice@x", "bob@x"])
    assert s1 == seen_for((a, 60.0), ["alice@x"]) and s1 != s2 and seen_for(None, ["a@x"]) is None


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_admit_records_once_per_window_and_expires(engine):
    one, two = Seen("1" * 64, 100.0), Seen("2" * 64, 100.0)
    with transaction(engine) as conn:
        assert admit(conn, [one, None, two, one], 1000.0) == {3}  # the second copy in one batch too
    with transaction(engine) as conn:
        assert admit(conn, [one, two], 1099.0) == {0, 1}
    with transaction(engine) as conn:
        assert admit(conn, [one], 1100.0) == set()  # the window is over: the first copy again
    with transaction(engine) as conn:
        assert admit(conn, [None, None], 1100.0) == set()


def test_a_rolled_back_commit_leaves_nothing_seen(engine):
    """A crash before the commit: the retry is the first copy, not a replay."""
    s = Seen("3" * 64, 100.0)
    with pytest.raises(RuntimeError), transaction(engine) as conn:
        admit(conn, [s], 1000.0)
        raise RuntimeError("crash before commit")
    with transaction(engine) as conn:
        assert admit(conn, [s], 1001.0) == set()


def test_enqueue_drops_a_replay_and_audits_it(engine):
    clock = Clock()
    log = AuditLog(engine, clock)
    q = Queue(engine, clock, audit_log=log)
    seen = Seen("4" * 64, 3600.0)

    def item(body: bytes) -> NewMessage:
        return NewMessage("bruno@justice.gouv.fr", [("alice@interieur.gouv.fr", "maildir")], body,
                          audit=("accepted", {"sender_domain": J}), replay=seen)

    first = q.enqueue_many([item(b"first")])
    again = q.enqueue_many([item(b"again"), NewMessage("x@y.z", [("a@b.c", "maildir")], b"other")])
    assert len(again) == 2 and q.show(again[0]) is None and q.show(again[1]) is not None
    assert q.body(first[0]) == b"first"
    kinds = [(r.kind, r.fields.get("message_id")) for r in log.records()]
    assert kinds == [("accepted", first[0]), ("replay", again[0])]
    assert log.records()[-1].fields == {"message_id": again[0], "sender_domain": J, "replay_of": "4" * 16}
