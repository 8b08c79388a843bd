"""Every policy decision, tested without sockets: RCPT relay control, the rule chain, the encryption check."""

from __future__ import annotations

import re

import pytest

from securemail.envelope import Envelope
from securemail.policy import encryption, rules
from securemail.policy.address import split
from securemail.policy.facts import MEMBER, OFFICE, OTHER, OWN, REMOTE, gather
from securemail.policy.recipient import decide_rcpt

OWN_D = ("interieur.gouv.fr",)
MEMBERS = frozenset({"justice.gouv.fr"})
ENC = encryption.EncryptionCheck(True, "pgp/mime", "", ("ABCDEF0123456789",))
PLAIN = encryption.EncryptionCheck(False, "none", "message is not OpenPGP encrypted")


def env(mail_from="bruno@justice.gouv.fr", rcpts=("alice@interieur.gouv.fr",), frm=None,
        extra=b"", tls=True, auth=None, ip="192.0.2.7") -> Envelope:
    frm = frm if frm is not None else [mail_from]
    head = b"".join(b"From: " + f.encode() + b"\r\n" for f in frm)
    data = head + extra + b"Subject: x\r\n\r\nbody\r\n"
    return Envelope(mail_from, tuple(rcpts), data, ip, 2525, tls, None, auth, "peer", 0.0)


def facts(e: Envelope, *, trusted=False, enc=ENC, dkim="pass", dkim_domains=("justice.gouv.fr",),
          policy="refuse", cert=("justice.gouv.fr",)):
    """``cert``: the member domains pinned to the session's client certificate (None: no certificate)."""
    return gather(e, listener="relay", trusted=trusted, own_domains=OWN_D, members=MEMBERS,
                  encryption=enc, dkim_status=dkim, dkim_domains=frozenset(dkim_domains),
                  non_member_policy=policy, cert_domains=None if cert is None else frozenset(cert))


# --- addresses and RCPT -----------------------------------------------------------
@pytest.mark.parametrize("addr", ["ext@other.fr%gw", "u%ext@interieur.gouv.fr", "@gw:u@ext.fr",
                                  '"quoted"@interieur.gouv.fr', "a@b", "nul\x00@interieur.gouv.fr",
                                  "a!b@interieur.gouv.fr", "x@[127.0.0.1]", "two@at@x.fr", ""])
def test_relay_tricks_are_bad_syntax(addr):
    assert split(addr) is None
    assert decide_rcpt(addr, office=True, own_domains=OWN_D, members=MEMBERS).reply.startswith("501 5.1.3")


def test_anyone_may_send_to_own_domain():
    assert decide_rcpt("alice@INTERIEUR.gouv.fr", office=False, own_domains=OWN_D, members=MEMBERS) is None


@pytest.mark.parametrize("rcpt", ["bruno@justice.gouv.fr", "ext@example.org"])
def test_outsiders_may_not_relay(rcpt):
    v = decide_rcpt(rcpt, office=False, own_domains=OWN_D, members=MEMBERS)
    assert v.reply == "554 5.7.1 Relay access denied"


def test_office_may_send_to_members_but_not_to_non_members_by_default():
    assert decide_rcpt("bruno@justice.gouv.fr", office=True, own_domains=OWN_D, members=MEMBERS) is None
    v = decide_rcpt("ext@example.org", office=True, own_domains=OWN_D, members=MEMBERS)
    assert v.reply.startswith("550 5.7.1 Recipient domain is not a federation member")
    assert decide_rcpt("ext@example.org", office=True, own_domains=OWN_D, members=MEMBERS,
                       non_member_policy="allow-plain") is None


# --- facts ----------------------------------------------------------------------------
def test_facts_classify_origin_and_recipients():
    f = facts(env(rcpts=("a@interieur.gouv.fr", "b@justice.gouv.fr", "c@example.org")), trusted=True)
    assert f.origin == OFFICE
    assert f.recipients == {"a@interieur.gouv.fr": OWN, "b@justice.gouv.fr": MEMBER, "c@example.org": OTHER}
    assert facts(env()).origin == REMOTE
    assert facts(env(auth="alice@interieur.gouv.fr")).origin == OFFICE


# --- the chain --------------------------------------------------------------------------
def test_good_inbound_passes_the_whole_chain():
    assert rules.evaluate(facts(env())) is None


def expect(f, rule, code):
    v = rules.evaluate(f)
    assert v is not None and v.rule == rule, v
    assert v.reply.startswith(code), v.reply
    assert re.fullmatch(r"[45]\d\d [45]\.\d+\.\d+ [\x20-\x7e]+", v.reply)


def test_two_from_headers_refused():
    expect(facts(env(frm=["bruno@justice.gouv.fr", "boss@justice.gouv.fr"])), "one_from", "550 5.7.1")


def test_two_addresses_in_one_from_refused():
    expect(facts(env(frm=["bruno@justice.gouv.fr, boss@interieur.gouv.fr"])), "one_from", "550 5.7.1")


def test_mailsploit_encoded_word_does_not_change_the_address():
    e = env(frm=["=?utf-8?b?cG90dXNAaW50ZXJpZXVyLmdvdXYuZnI=?= <bruno@justice.gouv.fr>"])
    f = facts(e)
    assert f.headers.from_addresses == ("bruno@justice.gouv.fr",)
    assert rules.evaluate(f) is None


def test_display_name_spoof_is_judged_by_address():
    e = env(frm=['"alice@interieur.gouv.fr" <mallory@example.org>'], mail_from="mallory@example.org")
    expect(facts(e), "remote_sender", "550 5.7.1")


def test_header_loop_refused():
    expect(facts(env(extra=b"Received: from x\r\n" * 31)), "mail_loop", "554 5.4.6")


def test_envelope_from_mismatch_refused():
    expect(facts(env(frm=["bruno@armees.gouv.fr"])), "sender_alignment", "550 5.7.1")


def test_null_sender_exempt_from_alignment_but_not_dkim():
    e = env(mail_from="", frm=["MAILER-DAEMON@justice.gouv.fr"])
    assert rules.evaluate(facts(e)) is None
    expect(facts(e, dkim="fail", dkim_domains=()), "member_dkim", "550 5.7.20")


def test_authenticated_user_sends_as_itself_only():
    e = env(mail_from="alice@interieur.gouv.fr", rcpts=("b@justice.gouv.fr",), auth="bob@interieur.gouv.fr")
    expect(facts(e, enc=PLAIN), "auth_identity", "550 5.7.1")
    ok = env(mail_from="alice@interieur.gouv.fr", rcpts=("b@justice.gouv.fr",), auth="alice@interieur.gouv.fr")
    assert rules.evaluate(facts(ok, enc=PLAIN)) is None


def test_office_cannot_send_for_foreign_domain():
    e = env(mail_from="x@example.org", rcpts=("b@justice.gouv.fr",))
    expect(facts(e, trusted=True, enc=PLAIN), "office_sender", "550 5.7.1")


def test_remote_spoofing_own_domain_refused():
    e = env(mail_from="alice@interieur.gouv.fr")
    expect(facts(e, dkim_domains=("interieur.gouv.fr",)), "remote_sender", "550 5.7.1")


def test_non_member_sender_refused_unless_allowed():
    e = env(mail_from="x@example.org")
    expect(facts(e, dkim_domains=("example.org",), enc=PLAIN), "remote_sender", "550 5.7.1")
    assert rules.evaluate(facts(e, dkim_domains=("example.org",), enc=PLAIN, policy="allow-plain")) is None


def test_member_without_tls_refused():
    expect(facts(env(tls=False)), "member_tls", "530 5.7.10")


@pytest.mark.parametrize("status", ["fail", "none", "permerror"])
def test_member_bad_dkim_refused(status):
    expect(facts(env(), dkim=status, dkim_domains=()), "member_dkim", "550 5.7.20")


def test_member_dkim_temperror_is_temporary():
    v = rules.evaluate(facts(env(), dkim="temperror", dkim_domains=()))
    assert v.temporary and v.reply.startswith("451 4.7.5")


def test_dkim_of_another_domain_is_not_aligned():
    expect(facts(env(), dkim_domains=("armees.gouv.fr",)), "member_dkim", "550 5.7.20")


def test_plaintext_between_members_refused():
    expect(facts(env(), enc=PLAIN), "member_encrypted", "550 5.7.1")


def test_office_plaintext_to_member_passes_policy_for_the_gateway_to_encrypt():
    e = env(mail_from="alice@interieur.gouv.fr", rcpts=("bruno@justice.gouv.fr",))
    assert rules.evaluate(facts(e, trusted=True, enc=PLAIN, dkim="none", dkim_domains=())) is None


def test_chain_order_is_data():
    assert [name for name, _ in rules.CHAIN][:3] == ["one_from", "mail_loop", "auth_identity"]
    assert rules.evaluate(facts(env(tls=False), enc=PLAIN), chain=[("enc", rules.member_encrypted)]).rule \
        == "member_encrypted"


# --- the encryption check ------------------------------------------------------------------
def test_encryption_check_on_the_corpus(corpus):
    for m in corpus["mail"]:
        raw = (corpus["dir"] / m["file"]).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        got = encryption.check(raw)
        if m["gateway"] == "reject":
            assert not got.encrypted, m["file"]
            assert got.reason
        elif m["gateway"] == "accept":
            assert got.encrypted, (m["file"], got.reason)
            assert got.payload.startswith(b"-----BEGIN PGP MESSAGE-----")


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"Content-Type: multipart/encrypted\r\n\r\n--x\r\n",
                                 b"Content-Type: multipart/encrypted; boundary=b; protocol=\"application/pgp-encrypted\""
                                 b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b"
                                 b"\r\nContent-Type: application/octet-stream\r\n\r\ngarbage\r\n--b--\r\n"])
def test_encryption_check_never_raises(raw):
    assert encryption.check(raw).encrypted is False


def _big_inline(cte: str) -> bytes:
    import base64
    from securemail.crypto import keys, message, openpgp
    bob = keys.Key(openpgp.generate("Bob <bob@example.org>", "ed25519", None, None))
    armored = message.encrypt(b"x" * (1 << 20) + b"\r\n", [(bob.public(), "bob@example.org")])
    body = base64.encodebytes(armored).replace(b"\n", b"\r\n") if cte == "base64" else armored.replace(b"\n", b"\r\n")
    return (b"From: a@b.example\r\nContent-Type: text/plain\r\n"
            + (f"Content-Transfer-Encoding: {cte}\r\n".encode() if cte else b"") + b"\r\n" + body)


@pytest.mark.parametrize("cte", ["", "7bit", "base64"])
def test_a_big_inline_message_is_still_found_encrypted(cte):
    raw = _big_inline(cte)
    assert len(raw) > encryption.HEADERS_FIRST_ABOVE
    got = encryption.check(raw)
    assert got.encrypted and got.format == "inline", got.reason


def test_a_big_plain_text_message_is_judged_without_a_full_parse(monkeypatch):
    raw = b"From: a@b.example\r\nContent-Type: text/plain\r\n\r\n" + b"plain text line\r\n" * 100_000
    monkeypatch.setattr(encryption, "BytesParser", None)  # a full parse would now fail loudly
    got = encryption.check(raw)
    assert not got.encrypted and not got.malformed and got.reason == "message is not OpenPGP encrypted"
