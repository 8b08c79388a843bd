"""DKIM verification on the one header-block parse, with its bounds (issue 10, finding 4).

Before dkimpy is called: at most MAX_SIGNATURES signatures of the wanted domains
are verified, a signature field over MAX_SIGNATURE_BYTES or with more than
MAX_SIGNED_NAMES h= entries is a permerror, and the header fields are those of
the block (no second parse). dkimpy is the oracle where a signature must pass.
"""

from __future__ import annotations

import functools
import time

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto import dkim as D
from securemail.crypto.dkim import (MAX_SIGNATURE_BYTES, MAX_SIGNATURES, MAX_SIGNED_NAMES, DkimSigner,
                                    generate_dkim_key, manifest_dnsfunc, verify_dkim)
from securemail.mail.headers import parse_header_block
from tests.fuzz import fuzz

DOMAIN = "justice.gouv.fr"
MSG = (b"From: Bruno <bruno@justice.gouv.fr>\r\nTo: <alice@interieur.gouv.fr>\r\nSubject: ...\r\n"
       b"Message-ID: <b@justice.gouv.fr>\r\n\r\nBody.\r\n")


@functools.cache
def one_key():
    return generate_dkim_key("ed25519")


@pytest.fixture(scope="module")
def key():
    return one_key()


@pytest.fixture(scope="module")
def signer(key):
    return DkimSigner(DOMAIN, [("sm", key.private_pem, "ed25519")])


@pytest.fixture(scope="module")
def dns(key):
    return manifest_dnsfunc({f"sm._domainkey.{DOMAIN}": key.public_txt})


def with_h(signed: bytes, names: bytes) -> bytes:
    """``signed`` with ``names`` added to the h= of its (first) signature: still parseable."""
    return signed.replace(b"h=", b"h=" + names + b":", 1)


def test_the_block_is_what_dkim_reads(signer, dns, monkeypatch):
    signed = signer.sign(MSG)
    block = parse_header_block(signed)
    monkeypatch.setattr(dkim, "rfc822_parse", lambda m: pytest.fail("the message was parsed again"))
    result = verify_dkim(signed, dns, block=block, domains=(DOMAIN,))
    assert result.status == "pass" and result.passing_domains == {DOMAIN}


def test_block_and_dkimpy_parse_agree(signer, dns):
    signed = signer.sign(MSG)
    assert dkim.verify(signed, dnsfunc=lambda n, timeout=5: dns(n)) is True
    ours = verify_dkim(signed, dns, block=parse_header_block(signed))
    assert ours == verify_dkim(signed, dns)
    tampered = signed.replace(b"Subject: ...", b"Subject: Urgent")
    assert verify_dkim(tampered, dns, block=parse_header_block(tampered)).status == "fail"


def test_too_many_h_entries_is_permerror_and_cheap(signer, dns):
    signed = signer.sign(MSG)
    present = dkim.util.parse_tag_value(signed.split(b":", 1)[1])[b"h"].count(b":") + 1
    fine = with_h(signed, b":".join([b"x-n"] * (MAX_SIGNED_NAMES - present)))
    assert verify_dkim(fine, dns).signatures[0].status == "fail"  # reaches dkimpy: h= no longer matches
    over = with_h(signed, b":".join([b"x-n"] * (MAX_SIGNED_NAMES - present + 1)))
    assert verify_dkim(over, dns).signatures[0].reason == f"more than {MAX_SIGNED_NAMES} h= entries"
    names = b":".join(b"x-h%05d" % i for i in range(16000))
    filler = b"".join(b"X-F%05d: v\r\n" % i for i in range(900))
    msg = with_h(signed, names).replace(b"\r\n\r\n", b"\r\n" + filler + b"\r\n", 1)
    block = parse_header_block(msg, max_bytes=1 << 20)
    start = time.process_time()
    result = verify_dkim(msg, dns, block=block, domains=(DOMAIN,))
    assert time.process_time() - start < 0.05
    assert result.status == "permerror"  # 16,000 names are over both bounds: the size is checked first
    assert result.signatures[0].reason == f"signature field over {MAX_SIGNATURE_BYTES} bytes"


def test_oversized_signature_field_is_permerror(signer, dns):
    signed = signer.sign(MSG)
    big = signed.replace(b"bh=", b"z=" + b"A" * MAX_SIGNATURE_BYTES + b"; bh=", 1)
    result = verify_dkim(big, dns, block=parse_header_block(big))
    assert result.status == "permerror" and "bytes" in result.signatures[0].reason


def test_at_most_max_signatures_verified(signer, dns, monkeypatch):
    signed = MSG
    for _ in range(MAX_SIGNATURES + 3):
        signed = signer.sign(signed)
    calls = []
    real = D._verify_one
    monkeypatch.setattr(D, "_verify_one", lambda *a: calls.append(1) or real(*a))
    result = verify_dkim(signed, dns, block=parse_header_block(signed), domains=(DOMAIN,))
    assert len(calls) == MAX_SIGNATURES == len(result.signatures)
    assert result.status == "pass" and "3 signatures beyond the limit" in result.reason


def test_only_the_wanted_domains_are_verified(signer, dns, key):
    other = DkimSigner("armees.gouv.fr", [("sm", key.private_pem, "ed25519")])
    signed = other.sign(other.sign(MSG))
    result = verify_dkim(signed, dns, block=parse_header_block(signed), domains=(DOMAIN,))
    assert result.status == "none" and result.signatures == () and "2 signatures of other domains" in result.reason
    both = signer.sign(signed)
    result = verify_dkim(both, dns, block=parse_header_block(both), domains=("Justice.Gouv.FR.",))
    assert result.status == "pass" and [s.domain for s in result.signatures] == [DOMAIN]


# --- differential: dkimpy over every field, and ours over the one parse, agree ----------------------
_EXTRA = st.sampled_from([b"From: <mallory@justice.gouv.fr>", b"Subject: Urgent", b"To: <x@y.fr>",
                          b"Reply-To: <m@evil.test>", b"Received: from x", b"X-Other: 1", b"Cc: <c@d.fr>",
                          b"Content-Type: text/html", b"Date: Mon, 1 Jan 2024 10:00:00 +0000"])


@fuzz(150)
@given(st.lists(st.tuples(st.integers(0, 12), _EXTRA), max_size=6), st.booleans())
def test_we_pass_exactly_what_dkimpy_passes(inserts, sign_twice):
    key = one_key()
    signer = DkimSigner(DOMAIN, [("sm", key.private_pem, "ed25519")])
    dns = manifest_dnsfunc({f"sm._domainkey.{DOMAIN}": key.public_txt})
    base = MSG.replace(b"Subject: ...\r\n", b"Subject: ...\r\nTo: <second@interieur.gouv.fr>\r\n")
    signed = signer.sign(signer.sign(base)) if sign_twice else signer.sign(base)
    lines = signed[:signed.index(b"\r\n\r\n")].split(b"\r\n")
    for at, extra in inserts:  # fields added above, between or below the signed ones (not in a fold)
        at = min(at, len(lines))
        while 0 < at < len(lines) and lines[at][:1] in (b" ", b"\t"):
            at += 1
        lines.insert(at, extra)
    msg = b"\r\n".join(lines) + signed[signed.index(b"\r\n\r\n"):]
    theirs = [dkim.DKIM(msg, minkey=2048).verify(idx=i, dnsfunc=lambda n, timeout=5: dns(n))
              for i in range(2 if sign_twice else 1)]
    ours = verify_dkim(msg, dns, block=parse_header_block(msg), domains=(DOMAIN,))
    assert [s.status == "pass" for s in ours.signatures] == [t is True for t in theirs]
