"""DKIM signing and verification: real signatures, a dict standing in for DNS, dkimpy as oracle."""

from __future__ import annotations

import base64
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securemail.crypto.dkim import (DkimSigner, aligned, generate_dkim_key, manifest_dnsfunc,
                                    verify_dkim)
from securemail.crypto.dkim_signing import (SIGNED_HEADERS, fold, relaxed_body_hash, relaxed_value,
                                            split_message)
from securemail.errors import KeyRefused, MalformedMessage

DOMAIN = "example.org"
MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
       b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n"
       b"Received: from somewhere\r\n\r\nHello Bob,\r\nthe report is attached.\r\n")
# what DkimSigner picks: the signed fields present, then every signed name once more (oversigned)
INCLUDE = [b"from", b"to", b"subject", b"date", b"message-id", *SIGNED_HEADERS]


@pytest.fixture(scope="module")
def ed_key():
    return generate_dkim_key("ed25519")


@pytest.fixture(scope="module")
def rsa_key():
    return generate_dkim_key("rsa2048")


@pytest.fixture(scope="module")
def signer(ed_key, rsa_key):
    return DkimSigner(DOMAIN, [("ed", ed_key.private_pem, "ed25519"),
                               ("rsa", rsa_key.private_pem, "rsa2048")])


@pytest.fixture(scope="module")
def dns(ed_key, rsa_key):
    return manifest_dnsfunc({"ed._domainkey.example.org": ed_key.public_txt,
                             "rsa._domainkey.example.org": rsa_key.public_txt})


def dkimpy_dns(dnsfunc):
    """dkimpy calls dnsfunc(name, timeout=...)."""
    return lambda name, timeout=5: dnsfunc(name)


def ed_seed_b64(key) -> bytes:
    """dkimpy wants the raw Ed25519 seed in base64, not PEM."""
    priv = serialization.load_pem_private_key(key.private_pem, None)
    return base64.b64encode(priv.private_bytes(serialization.Encoding.Raw,
                                               serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption()))


def rsa_pem(bits: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"


def by_selector(result):
    return {s.selector: s for s in result.signatures}


# --- keys --------------------------------------------------------------------------
def test_generated_keys_have_dns_records(ed_key, rsa_key):
    assert ed_key.algorithm == "ed25519" and ed_key.public_txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_key.public_txt.split("p=")[1])) == 32
    assert rsa_key.public_txt.startswith("v=DKIM1; k=rsa; p=")
    assert b"PRIVATE KEY" in rsa_key.private_pem
    assert "BEGIN" not in repr(rsa_key) and "BEGIN" not in repr(ed_key)


def test_signer_refuses_bad_keys(ed_key, rsa_key):
    with pytest.raises(KeyRefused):
        DkimSigner(DOMAIN, [("s", b"garbage", "rsa2048")])
    with pytest.raises(KeyRefused):
        DkimSigner(DOMAIN, [("s", ed_key.private_pem, "rsa2048")])
    with pytest.raises(KeyRefused):
        DkimSigner(DOMAIN, [("s", rsa_pem(1024)[0], "rsa2048")])


def test_signer_refuses_message_without_from(signer):
    with pytest.raises(MalformedMessage):
        signer.sign(b"To: bob@example.net\r\nSubject: x\r\n\r\nbody\r\n")


# --- sign and verify -------------------------------------------------------------------
def test_sign_both_and_verify_both_pass(signer, dns):
    signed = signer.sign(MSG)
    assert signed.endswith(MSG)
    assert signed.count(b"DKIM-Signature:") == 2
    assert signed.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;")
    result = verify_dkim(signed, dns)
    assert result.status == "pass"
    assert [s.status for s in result.signatures] == ["pass", "pass"]
    assert result.passing_domains == {DOMAIN}


def test_ed25519_signature_really_passes(signer, dns):
    """Without PyNaCl dkimpy reports Ed25519 as not verifying; the ed one must pass itself."""
    sig = by_selector(verify_dkim(signer.sign(MSG), dns))["ed"]
    assert (sig.algorithm, sig.status, sig.domain) == ("ed25519-sha256", "pass", DOMAIN)


def test_signed_headers_all_oversigned(signer):
    header = signer.sign(MSG).split(b"\r\nFrom:")[0]
    h = dkim.util.parse_tag_value(header.split(b"DKIM-Signature:")[-1])[b"h"]
    assert [x.strip() for x in h.split(b":")] == INCLUDE  # Received is not signed


def test_lf_only_message(signer, dns):
    signed = signer.sign(MSG.replace(b"\r\n", b"\n"))
    assert b"\r" not in signed
    assert verify_dkim(signed, dns).status == "pass"


def test_tampered_body_fails(signer, dns):
    signed = signer.sign(MSG).replace(b"the report", b"the ransom")
    result = verify_dkim(signed, dns)
    assert result.status == "fail"
    assert {s.status for s in result.signatures} == {"fail"}
    assert result.passing_domains == set()


def test_tampered_signed_header_fails(signer, dns):
    result = verify_dkim(signer.sign(MSG).replace(b"Subject: hi", b"Subject: HI there"), dns)
    assert result.status == "fail" and {s.status for s in result.signatures} == {"fail"}


def test_added_from_header_fails(signer, dns):
    signed = signer.sign(MSG).replace(b"To: bob", b"From: mallory@evil.test\r\nTo: bob")
    assert verify_dkim(signed, dns).status == "fail"


def test_unsigned_header_may_change(signer, dns):
    signed = signer.sign(MSG).replace(b"Received: from somewhere", b"Received: from elsewhere")
    assert verify_dkim(signed, dns).status == "pass"


def test_no_signature_is_none(dns):
    result = verify_dkim(MSG, dns)
    assert result.status == "none" and result.signatures == ()
    assert not aligned(result, DOMAIN)


def test_missing_key_is_permerror(signer):
    result = verify_dkim(signer.sign(MSG), manifest_dnsfunc({}))
    assert result.status == "permerror"
    assert all(s.status == "permerror" and "no key" in s.reason for s in result.signatures)


def test_bad_key_record_is_permerror(signer):
    dns = manifest_dnsfunc({"ed._domainkey.example.org": "v=DKIM1; k=ed25519; p=!!!",
                            "rsa._domainkey.example.org": "v=DKIM1; k=rsa; p="})
    result = verify_dkim(signer.sign(MSG), dns)
    assert [s.status for s in result.signatures] == ["permerror", "permerror"]


def test_key_type_mismatch_is_permerror(signer, ed_key):
    dns = manifest_dnsfunc({"rsa._domainkey.example.org": ed_key.public_txt,
                            "ed._domainkey.example.org": ed_key.public_txt})
    sigs = by_selector(verify_dkim(signer.sign(MSG), dns))
    assert sigs["ed"].status == "pass"
    assert sigs["rsa"].status == "permerror" and "does not match" in sigs["rsa"].reason


def test_wrong_key_fails(signer, ed_key):
    other = generate_dkim_key("ed25519")
    dns = manifest_dnsfunc({"ed._domainkey.example.org": other.public_txt})
    assert by_selector(verify_dkim(signer.sign(MSG), dns))["ed"].status == "fail"


def test_hostile_dnsfunc_is_temperror(signer):
    def boom(name):
        raise OSError("resolver exploded")
    result = verify_dkim(signer.sign(MSG), boom)
    assert result.status == "temperror"
    assert all("resolver exploded" in s.reason for s in result.signatures)


@pytest.mark.parametrize("value", [
    b" garbage",
    b" v=1; a=rsa-sha256; d=example.org",
    b" v=1; v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA",
    b" v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=*not base64*",
    b" v=1; a=rsa-md5; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA",
    b" v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA; t=999999999999",
    b" \xff\xfe=\x00",
])
def test_garbage_signature_header_is_permerror(value, dns):
    result = verify_dkim(b"DKIM-Signature:" + value + b"\r\n" + MSG, dns)
    assert result.status == "permerror"
    assert result.signatures[0].status == "permerror"


def test_unparseable_message_is_permerror(dns):
    result = verify_dkim(b"DKIM-Signature: v=1\r\n\x01bad header line\r\n\r\nbody", dns)
    assert result.status == "permerror" and result.reason


def test_one_good_one_bad_signature(signer, dns):
    forged = DkimSigner("evil.test", [("x", generate_dkim_key("ed25519").private_pem, "ed25519")])
    result = verify_dkim(forged.sign(signer.sign(MSG)), dns)
    assert result.status == "pass"
    assert [s.status for s in result.signatures] == ["permerror", "pass", "pass"]
    assert result.passing_domains == {DOMAIN}


def test_signature_limit(signer, dns):
    signed = signer.sign(signer.sign(signer.sign(MSG)))
    result = verify_dkim(signed, dns, max_signatures=4)
    assert len(result.signatures) == 4 and "2 signatures" in result.reason


# --- local policy refusals -----------------------------------------------------------
def test_body_length_tag_is_refused(rsa_key, dns):
    header = dkim.sign(MSG, b"rsa", DOMAIN.encode(), rsa_key.private_pem, length=True,
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=INCLUDE)
    signed = header + MSG
    assert dkim.verify(signed, dnsfunc=dkimpy_dns(dns))  # valid by RFC 6376, refused by us
    sig = verify_dkim(signed, dns).signatures[0]
    assert sig.status == "fail" and "l=" in sig.reason


def test_sha1_is_refused(rsa_key, dns):
    header = dkim.sign(MSG, b"rsa", DOMAIN.encode(), rsa_key.private_pem,
                       signature_algorithm=b"rsa-sha1", include_headers=INCLUDE)
    sig = verify_dkim(header + MSG, dns).signatures[0]
    assert sig.status == "fail" and "SHA-1" in sig.reason


def test_small_rsa_key_is_refused():
    pem, txt = rsa_pem(1024)
    dns = manifest_dnsfunc({"old._domainkey.example.org": txt})
    signed = dkim.sign(MSG, b"old", DOMAIN.encode(), pem, include_headers=INCLUDE) + MSG
    assert dkim.verify(signed, dnsfunc=dkimpy_dns(dns))  # dkimpy's default minimum is 1024
    result = verify_dkim(signed, dns)
    assert result.status == "fail" and "too small" in result.signatures[0].reason
    assert not aligned(result, DOMAIN)


def test_expired_signature_is_refused(ed_key, dns):
    month_ago = dkim.time.time() - 30 * 86400
    old = DkimSigner(DOMAIN, [("ed", ed_key.private_pem, "ed25519")],
                     clock=lambda: month_ago, expire_after=3600)
    sig = verify_dkim(old.sign(MSG), dns).signatures[0]
    assert sig.status == "fail" and "expired" in sig.reason


def test_unexpired_signature_passes(ed_key, dns):
    fresh = DkimSigner(DOMAIN, [("ed", ed_key.private_pem, "ed25519")], expire_after=3600)
    signed = fresh.sign(MSG)
    assert b"x=" in signed and verify_dkim(signed, dns).status == "pass"


def test_from_not_signed_is_refused(signer, dns):
    signed = re.sub(rb"h=[^;]+;", b"h=to : subject;", signer.sign(MSG), count=1)
    sig = verify_dkim(signed, dns).signatures[0]
    assert sig.status == "fail" and "From" in sig.reason


# --- alignment and the manifest resolver ---------------------------------------------------
def test_alignment(signer, dns):
    result = verify_dkim(signer.sign(MSG), dns)
    assert aligned(result, "example.org") and aligned(result, "Example.ORG.")
    assert not aligned(result, "sub.example.org") and not aligned(result, "org")
    assert not aligned(verify_dkim(signer.sign(MSG).replace(b"hi", b"ho"), dns), DOMAIN)


def test_results_have_no_truth_value(signer, dns):
    result = verify_dkim(signer.sign(MSG), dns)
    with pytest.raises(TypeError):
        bool(result)
    with pytest.raises(TypeError):
        bool(result.signatures[0])


def test_manifest_dnsfunc_lookup_and_fallback():
    asked = []
    fallback = lambda name: asked.append(name) or "v=DKIM1; p=from-dns"  # noqa: E731
    dns = manifest_dnsfunc({"Sel._domainkey.Member.example.": "v=DKIM1; p=manifest"}, fallback)
    assert dns(b"sel._domainkey.member.example.") == "v=DKIM1; p=manifest"
    assert dns(b"other._domainkey.member.example.") is None  # manifest is authoritative
    assert dns(b"sel._domainkey.outsider.example.") == "v=DKIM1; p=from-dns"
    assert asked == [b"sel._domainkey.outsider.example."]
    assert manifest_dnsfunc({})(b"sel._domainkey.outsider.example.") is None


# --- interoperability of the fast path with plain dkimpy ------------------------------------
@pytest.mark.parametrize("alg", ["rsa", "ed"])
def test_fast_path_is_byte_identical_to_dkimpy(alg, ed_key, rsa_key):
    key, a_tag, dkimpy_key = {"rsa": (rsa_key, b"rsa-sha256", rsa_key.private_pem),
                              "ed": (ed_key, b"ed25519-sha256", ed_seed_b64(ed_key))}[alg]
    theirs = dkim.sign(MSG, alg.encode(), DOMAIN.encode(), dkimpy_key, signature_algorithm=a_tag,
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=INCLUDE)
    t = int(dkim.util.parse_tag_value(theirs.split(b":", 1)[1])[b"t"])
    ours = DkimSigner(DOMAIN, [(alg, key.private_pem, key.algorithm)], clock=lambda: t)
    assert ours.sign(MSG) == theirs + MSG


def test_fast_path_verifies_with_plain_dkimpy(signer, dns):
    signed = signer.sign(MSG)
    assert dkim.verify(signed, dnsfunc=dkimpy_dns(dns), minkey=2048) is True
    assert dkim.DKIM(signed, minkey=2048).verify(idx=1, dnsfunc=dkimpy_dns(dns)) is True


@pytest.mark.parametrize("alg", ["rsa", "ed"])
def test_plain_dkimpy_signature_verifies_with_us(alg, ed_key, rsa_key, dns):
    a_tag, dkimpy_key = {"rsa": (b"rsa-sha256", rsa_key.private_pem),
                         "ed": (b"ed25519-sha256", ed_seed_b64(ed_key))}[alg]
    header = dkim.sign(MSG, alg.encode(), DOMAIN.encode(), dkimpy_key, signature_algorithm=a_tag)
    result = verify_dkim(header + MSG, dns)
    assert result.status == "pass" and result.signatures[0].selector == alg


# --- dkim_signing against dkimpy, edge by edge ----------------------------------------------
HEAD = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net,\r\n\tcarol@example.net\r\n"
        b"Subject: a  folded\r\n   subject\t with\ttabs  \r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        b"Message-ID: <m2@example.org>\r\nContent-Type: multipart/encrypted;\r\n"
        b" protocol=\"application/pgp-encrypted\";\r\n boundary=\"b1\"\r\n"
        b"Received: from somewhere\r\n\r\n")
EDGE_MESSAGES = {
    "folded headers": HEAD + b"--b1\r\nVersion: 1\r\n--b1--\r\n",
    "empty body": HEAD,
    "body of empty lines": HEAD + b"\r\n\r\n\r\n",
    "no final CRLF": HEAD + b"last line without an end",
    "trailing whitespace lines": HEAD + b"text  \r\n \t \r\n\tindented\t\r\n\r\n  \r\n\t\r\n",
    "lone CR and spaces": HEAD + b"a \r b  \r\r\n\r",
    "LF only": (HEAD + b"one\n  two \n\n\n").replace(b"\r\n", b"\n"),
    "mixed line ends": HEAD + b"one\ntwo\r\n\nthree \n",
    "mbox From line": b"From alice@example.org Mon Jan  1 10:00:00 2024\r\n" + HEAD + b"hi\r\n",
    "no blank line": HEAD[:-2],
}


@pytest.mark.parametrize("alg", ["rsa", "ed"])
@pytest.mark.parametrize("name", list(EDGE_MESSAGES))
def test_edge_messages_byte_identical_and_verify(name, alg, ed_key, rsa_key, dns):
    msg = EDGE_MESSAGES[name]
    key, a_tag, dkimpy_key = {"rsa": (rsa_key, b"rsa-sha256", rsa_key.private_pem),
                              "ed": (ed_key, b"ed25519-sha256", ed_seed_b64(ed_key))}[alg]
    include = [b"from", b"to", b"subject", b"date", b"message-id", b"content-type", *SIGNED_HEADERS]
    theirs = dkim.sign(msg, alg.encode(), DOMAIN.encode(), dkimpy_key, signature_algorithm=a_tag,
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                       linesep=dkim.util.get_linesep(msg))  # as we fold: like the message's lines
    t = int(dkim.util.parse_tag_value(theirs.split(b":", 1)[1])[b"t"])
    ours = DkimSigner(DOMAIN, [(alg, key.private_pem, key.algorithm)], clock=lambda: t).sign(msg)
    assert ours == theirs + msg
    assert dkim.verify(ours, dnsfunc=dkimpy_dns(dns), minkey=2048) is True
    assert verify_dkim(ours, dns).status == "pass"


def test_edge_messages_both_keys_one_body_hash(signer, dns):
    for name, msg in EDGE_MESSAGES.items():
        signed = signer.sign(msg)
        result = verify_dkim(signed, dns)
        assert [s.status for s in result.signatures] == ["pass", "pass"], name
        bh = {dkim.util.parse_tag_value(v)[b"bh"] for k, v in dkim.DKIM(signed).headers
              if k == b"DKIM-Signature"}
        assert len(bh) == 1, name


def test_continuation_before_any_header_is_malformed(signer):
    with pytest.raises(MalformedMessage):
        signer.sign(b" folded\r\nFrom: a@example.org\r\n\r\nbody\r\n")
    with pytest.raises(MalformedMessage):
        signer.sign(b"From: a@example.org\r\nnot a header\r\n\r\nbody\r\n")


def test_relaxed_body_hash_equals_dkimpy_at_every_chunk_size():
    """Chunks cut at line ends, trailing empty lines held back across chunks: no difference."""
    import hashlib
    import random

    from dkim.canonicalization import Relaxed
    rnd = random.Random(7)
    bodies = [b"", b"\r\n", b"\n", b"abc\r\n\r\n\r\n", b"a  b\t c \r\n\r\n", b"line\r\nline2",
              b"x \r\n", b"\r", b"\r\r\n", b"a\r\n\r\r\n\r\n", b" ", b"\t\r\n\r\nx"]
    bodies += [bytes(rnd.choice(b"ab \t\r\n") for _ in range(rnd.randint(0, 40))) for _ in range(3000)]
    for body in bodies:
        want = hashlib.sha256(Relaxed.canonicalize_body(b"\r\n".join(re.split(b"\r?\n", body))))
        for chunk in (1, 2, 5, 1 << 20):
            assert relaxed_body_hash(b"Hdr" + body, 3, chunk) == want.digest(), (body, chunk)


def test_fold_and_relaxed_value_equal_dkimpy():
    import random

    from dkim.canonicalization import Relaxed
    rnd = random.Random(8)
    for _ in range(3000):
        text = bytes(rnd.choice(b"ab;= \r\n") for _ in range(rnd.randint(0, 300)))
        for namelen, sep in ((0, b"\r\n"), (14, b"\r\n"), (14, b"\n")):
            assert fold(text, namelen, sep) == dkim.fold(text, namelen, sep), text
        value = text[:40] + bytes(rnd.choice(b"\t\x0b\x0c ") for _ in range(3))
        assert relaxed_value(value) + b"\r\n" == Relaxed.canonicalize_headers([(b"x", value)])[0][1]


def test_split_message_equals_rfc822_parse():
    import random
    rnd = random.Random(9)
    messages = list(EDGE_MESSAGES.values())
    messages += [bytes(rnd.choice(b"ab: \t\r\n") for _ in range(rnd.randint(0, 60))) for _ in range(3000)]
    for msg in messages:
        try:
            theirs = dkim.rfc822_parse(msg)
        except (dkim.MessageFormatError, IndexError):  # IndexError: a continuation comes first
            with pytest.raises(MalformedMessage):
                split_message(msg)
            continue
        fields, start = split_message(msg)
        assert fields == [list(f) for f in theirs[0]], msg
        assert b"\r\n".join(re.split(b"\r?\n", msg[start:])) == theirs[1], msg


def test_25_mib_message_costs_one_copy(signer, dns):
    """The signed message is the only copy: no lines list, no canonical body (dkimpy made 3.6)."""
    import tracemalloc
    body = (b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + b"QUJD" * 19 + b"\r\n") * (25 * 4096)
    msg = MSG.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    tracemalloc.start()
    try:
        signed = signer.sign(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * len(msg), peak / len(msg)
    assert signed.endswith(msg) and verify_dkim(signed, dns).status == "pass"
