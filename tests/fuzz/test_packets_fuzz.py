"""Fuzzing OpenPGP framing, armor and the inner packet stream: packets, armor, message.parse_inner.

Structure-aware: packet streams are generated with every header form (new
format with one-, two- and five-octet lengths and partial bodies; old format
with one-, two-, four-octet and indeterminate lengths), then serialised,
parsed back, and mutated (truncated, bit-flipped, spliced). The decrypted side
gets literal, one-pass, signature and compressed packets (ZIP, ZLIB, BZip2,
bombs included) under small limits. Only SecureMailError may come out; what
parses must parse to exactly what was written; memory stays bounded.
(tests/unit/test_crypto_armor_packets.py covers arbitrary bytes and
new-format streams; this goes further, not over the same ground.)
"""

from __future__ import annotations

import base64
import binascii
import bz2
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto import armor as A
from securemail.crypto import message as M
from securemail.crypto import packets as P
from securemail.errors import IntegrityError, LimitExceeded, SecureMailError

from . import fuzz, only_ours

MiB = 1 << 20
TAGS = st.sampled_from([P.PKESK, P.SIG, P.SKESK, P.OPS, P.COMPRESSED, P.SED, P.MARKER, P.LITERAL,
                        P.UID, P.SEIPD, P.MDC, P.AEAD, P.PADDING, P.PUBKEY, P.PUBSUBKEY, 15])
FORMS = ["new1", "new2", "new5", "partial", "old1", "old2", "old4"]


def header(tag: int, body: bytes, form: str, chunk_exp: int = 0) -> bytes:
    """One packet, ``body`` framed with header form ``form``."""
    n = len(body)
    if form.startswith("old") and tag > 15:  # the old format has four bits for the tag
        form = "new1"
    if form.startswith("old"):
        ltype, size = {"old1": (0, 1), "old2": (1, 2), "old4": (2, 4), "oldi": (3, 0)}[form]
        return bytes([0x80 | (tag << 2) | ltype]) + (n.to_bytes(size, "big") if size else b"") + body
    if form == "new5":
        return bytes([0xC0 | tag, 0xFF]) + n.to_bytes(4, "big") + body
    if form == "partial":  # 2**e chunks while more than one chunk remains, then a definite length
        out, step, pos = bytes([0xC0 | tag]), 1 << chunk_exp, 0
        while n - pos > step:
            out += bytes([0xE0 | chunk_exp]) + body[pos:pos + step]
            pos += step
        return out + P.write_packet(tag, body[pos:])[1:]
    return P.write_packet(tag, body)  # new1/new2 pick themselves by size


@st.composite
def packet(draw, last: bool = False):
    tag = draw(TAGS)
    body = draw(st.binary(max_size=400))
    forms = [f for f in FORMS if not (f.startswith("old") and tag > 15)]
    forms = [f for f in forms if not (f == "old1" and len(body) > 255)]
    if last and tag <= 15:
        forms.append("oldi")
    form = draw(st.sampled_from(forms))
    return tag, body, header(tag, body, form, draw(st.integers(0, 6)))


@st.composite
def stream(draw):
    pkts = draw(st.lists(packet(), min_size=0, max_size=6))
    pkts.append(draw(packet(last=True)))
    return pkts


@fuzz(300)
@given(stream())
def test_every_header_form_parses_back_to_what_was_written(pkts):
    data = b"".join(raw for _, _, raw in pkts)
    got = P.read_packets(data)
    assert [(p.tag, p.body) for p in got] == [(t, b) for t, b, _ in pkts]
    assert b"".join(p.raw for p in got) == data


@st.composite
def mutated(draw):
    data = b"".join(raw for _, _, raw in draw(stream()))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if how == "truncate":
        return data[:at]
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:] if data else data
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "delete":
        return data[:at] + data[at + draw(st.integers(1, 8)):]
    return data[:at] + data[draw(st.integers(0, len(data))):]


@fuzz(300)
@given(mutated())
def test_mutated_streams_raise_only_securemail_errors(data):
    only_ours(P.read_packets, data)
    shape = only_ours(P.check_encrypted, data)
    if shape is not None:
        assert shape.seipd.tag == P.SEIPD and shape.seipd.body[:1] == b"\x01"
        assert shape.pkesks or shape.skesks
    only_ours(M.decrypt, data, [], lambda kid, fpr: None)


# --- the pre-decryption check against an oracle -----------------------------------------------
_KIND = {"pkesk": lambda b: (P.PKESK, b"\x03" + b[:8].ljust(8, b"k") + b"\x12" + b),
         "skesk": lambda b: (P.SKESK, b"\x04\x09\x03" + b), "seipd": lambda b: (P.SEIPD, b"\x01" + b),
         "seipd2": lambda b: (P.SEIPD, b"\x02" + b), "sed": lambda b: (P.SED, b or b"x"),
         "aead": lambda b: (P.AEAD, b"\x01" + b), "literal": lambda b: (P.LITERAL, b"b\x00" + b),
         "marker": lambda b: (P.MARKER, b"PGP"), "padding": lambda b: (P.PADDING, b),
         "sig": lambda b: (P.SIG, b"\x04" + b), "compressed": lambda b: (P.COMPRESSED, b"\x01" + b)}


@fuzz(300)
@given(st.lists(st.tuples(st.sampled_from(sorted(_KIND)), st.binary(max_size=80),
                          st.sampled_from(["new1", "new5", "partial", "old4"]), st.integers(0, 5)),
                min_size=1, max_size=6))
def test_check_encrypted_accepts_exactly_esks_then_one_seipd_v1(items):
    data = b"".join(header(*_KIND[k](b), form, e) for k, b, form, e in items)
    core = [k for k, _, _, _ in items if k not in ("marker", "padding")]
    esks = next((i for i, k in enumerate(core) if k not in ("pkesk", "skesk")), len(core))
    try:
        shape = P.check_encrypted(data)
    except IntegrityError:
        assert "sed" in core[esks:esks + 1] or (esks == 0 and "sed" in core)
        return
    except SecureMailError:
        assert not (esks > 0 and core[esks:] == ["seipd"])
        return
    assert esks > 0 and core[esks:] == ["seipd"], core
    assert len(shape.pkesks) == core.count("pkesk") and len(shape.skesks) == core.count("skesk")


# --- armor -------------------------------------------------------------------------------------------
@st.composite
def armored(draw):
    data = draw(st.binary(min_size=1, max_size=600))
    width = draw(st.sampled_from([64, 76, 4, 1000]))
    b64 = binascii.b2a_base64(data, newline=False)
    lines = [b64[i:i + width] for i in range(0, len(b64), width)]
    headers = draw(st.lists(st.sampled_from([b"Version: GnuPG v2", b"Comment: x", b"Charset: UTF-8"]),
                            max_size=2))
    crc = [b"=" + base64.b64encode(A.crc24(data).to_bytes(3, "big"))] if draw(st.booleans()) else []
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    text = eol.join([b"-----BEGIN PGP MESSAGE-----", *headers, b"", *lines, *crc, b"-----END PGP MESSAGE-----"])
    prefix = draw(st.sampled_from([b"", b"Texte avant.\n", b"\n\n"]))
    return data, prefix + text + eol


@fuzz(300)
@given(armored())
def test_armor_variants_decode_to_their_data(case):
    data, text = case
    assert A.dearmor(text) == ("PGP MESSAGE", data)


@fuzz(300)
@given(armored(), st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_mutated_armor_raises_only_securemail_errors(case, at, junk):
    _, text = case
    at %= len(text)
    for variant in (text[:at], text[:at] + junk + text[at:], text[:at] + text[at + 1:]):
        got = only_ours(A.dearmor, variant)
        assert got is None or (got[0] == "PGP MESSAGE" and got[1])


# --- what comes out of decryption: literal, one-pass, signatures, compression --------------------
LIMITS = M.Limits(max_message=4 * MiB, max_plaintext=256 * 1024, max_packets=200)


def compress(algo: int, data: bytes) -> bytes:
    if algo == 1:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    if algo == 2:
        return zlib.compress(data, 9)
    if algo == 3:
        return bz2.compress(data, 9)
    return data


_LITERAL = st.tuples(st.sampled_from(b"btu"), st.binary(max_size=20), st.binary(max_size=300)).map(
    lambda t: P.write_packet(P.LITERAL, bytes([t[0], len(t[1])]) + t[1] + b"\x00" * 4 + t[2]))
_INNER_PACKET = st.one_of(_LITERAL, st.sampled_from([
    P.write_packet(P.OPS, b"\x03\x00\x08\x16" + b"k" * 8 + b"\x01"), P.write_packet(P.SIG, b"\x04\x00\x16\x08"),
    P.write_packet(P.MARKER, b"PGP"), P.write_packet(P.UID, b"x"), P.write_packet(P.LITERAL, b"b\x00")]))


@st.composite
def inner(draw):
    plain = b"".join(draw(st.lists(_INNER_PACKET, min_size=1, max_size=4)))
    if draw(st.booleans()):
        algo = draw(st.sampled_from([0, 1, 2, 3, 7]))
        payload = compress(algo, plain)
        if draw(st.booleans()):
            payload = payload[:draw(st.integers(0, len(payload)))]
        plain = P.write_packet(P.COMPRESSED, bytes([algo]) + payload)
        if draw(st.booleans()):  # nested compression
            plain = P.write_packet(P.COMPRESSED, b"\x02" + zlib.compress(plain))
    return plain


@fuzz(300)
@given(inner())
def test_parse_inner_raises_only_securemail_errors(plain):
    got = only_ours(M.parse_inner, plain, LIMITS)
    if got is not None:
        data, filename, mode, sigs = got
        assert len(data) <= LIMITS.max_plaintext and isinstance(filename, str) and len(mode) == 1
        assert all(s.startswith(bytes([0xC0 | P.SIG])) for s in sigs)


@fuzz(12, deadline=None)  # tracemalloc is slow; each bomb alone takes well under a second
@given(st.sampled_from([1, 2, 3]), st.integers(1, 16), st.sampled_from([b"\x00", b"A", b"ab"]))
def test_compression_bombs_stop_at_the_limit_in_bounded_memory(algo, mib, fill):
    """``mib`` MiB of one byte, compressed, inside a literal: refused at 256 KiB, memory a few MiB."""
    literal = P.write_packet(P.LITERAL, b"b\x00\x00\x00\x00\x00" + fill * (mib * MiB // len(fill)))
    bomb = P.write_packet(P.COMPRESSED, bytes([algo]) + compress(algo, literal))
    del literal
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded):
            M.parse_inner(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB + 2 * len(bomb), f"peak {peak >> 10} KiB for a {len(bomb) >> 10} KiB bomb"
