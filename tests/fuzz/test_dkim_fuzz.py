"""Fuzzing DKIM verification (crypto.dkim.verify_dkim), which runs on every message from outside.

Messages carry generated DKIM-Signature headers (real signatures by a real
key, then their tags mutated; or tag lists made up) and the key lookup returns
generated records (the real one, truncated, other types, garbage, errors).
verify_dkim never raises, always answers with one of the five statuses, and a
signature it passes is one the real key made over the message as sent.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto.dkim import DkimSigner, generate_dkim_key, verify_dkim

from . import fuzz

STATUSES = {"pass", "fail", "none", "temperror", "permerror"}
MESSAGE = (b"From: Bruno <bruno@justice.gouv.fr>\r\nTo: <alice@interieur.gouv.fr>\r\nSubject: ...\r\n"
           b"Message-ID: <fuzz@justice.gouv.fr>\r\nContent-Type: text/plain\r\n\r\nCorps.\r\n")


@functools.cache
def real():
    """(the key's TXT record, the message signed by it)."""
    key = generate_dkim_key("ed25519")
    return key.public_txt, DkimSigner("justice.gouv.fr", [("sm", key.private_pem, "ed25519")]).sign(MESSAGE)


_TAG = st.sampled_from([b"v", b"a", b"b", b"bh", b"c", b"d", b"h", b"i", b"l", b"q", b"s", b"t", b"x", b"z", b""])
_VALUE = st.one_of(st.sampled_from([b"1", b"ed25519-sha256", b"rsa-sha256", b"rsa-sha1", b"justice.gouv.fr",
                                    b"sm", b"from:to", b"to", b"relaxed/relaxed", b"simple", b"0", b"99999999999",
                                    b"-1", b"AAAA", b"=", b""]),
                   st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v))


@st.composite
def made_up(draw) -> bytes:
    tags = draw(st.lists(st.tuples(_TAG, _VALUE), max_size=12))
    header = b"DKIM-Signature: " + b"; ".join(t + b"=" + v for t, v in tags) + b"\r\n"
    return header * draw(st.integers(1, 3)) + MESSAGE


@st.composite
def mutated(draw) -> bytes:
    signed = real()[1]
    end = signed.index(b"\r\nFrom:")
    at = draw(st.integers(0, end))
    how = draw(st.sampled_from(["flip", "cut", "insert", "body"]))
    if how == "flip":
        return signed[:at] + bytes([signed[at] ^ 1]) + signed[at + 1:]
    if how == "cut":
        return signed[:at] + signed[end:]
    if how == "insert":
        return signed[:at] + draw(st.sampled_from([b"; l=3", b"; x=1", b";;", b"\r\n\t", b"=", b"; h=to"])) + signed[at:]
    return signed + draw(st.binary(max_size=20))


def records(txt: str):
    return st.sampled_from([txt, txt[:20], "", "v=DKIM1; k=rsa; p=AAAA", "v=DKIM1; k=ed25519; p=",
                            "garbage \x00", "v=DKIM2; p=x", None, "raise"])


@fuzz(200)
@given(st.one_of(made_up(), mutated(), st.binary(max_size=400)), st.data())
def test_verify_dkim_never_raises(message, data):
    txt, signed = real()
    record = data.draw(records(txt))

    def dnsfunc(name):
        if record == "raise":
            raise OSError("resolver down")
        return record

    result = verify_dkim(message, dnsfunc)
    assert result.status in STATUSES
    assert all(s.status in STATUSES for s in result.signatures)
    if result.status == "pass":
        assert record == txt  # only the real key makes a passing signature...
        assert message.endswith(MESSAGE) or message == signed  # ...over the message as it was signed
