"""Fuzzing MIME parsing and the encryption check: policy.encryption.check, mail.read.read_message.

Messages are generated with structure (multipart trees, PGP/MIME and inline
PGP with valid, broken and fake packet sequences, transfer encodings, odd
boundaries, duplicate headers, LF or CRLF) and as plain bytes. Properties:
nothing but a SecureMailError escapes (read_message and check raise nothing at
all), time and memory stay bounded, and the gateway and the reader agree: a
message the gateway takes for encrypted is never shown as plaintext by the
reader, and whatever the check does not call malformed the crypto stage can
take apart (transform.protected_inner).
"""

from __future__ import annotations

import base64
import quopri
import string
import time
from datetime import timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from securemail.crypto import armor as A
from securemail.crypto import message as M
from securemail.crypto import packets as P
from securemail.transform.routes import protected_inner
from securemail.mail.read import read_message
from securemail.policy import encryption

from . import bounded, fuzz

MiB = 1 << 20
NO_KEYS = ([], lambda keyid, fpr: None)


# --- packet payloads --------------------------------------------------------------------------
def _pkt(tag: int, body: bytes) -> bytes:
    return P.write_packet(tag, body)


_PKESK = st.binary(min_size=8, max_size=8).map(lambda kid: _pkt(P.PKESK, b"\x03" + kid + b"\x12" + b"k" * 40))
_SEIPD = st.binary(min_size=1, max_size=64).map(lambda b: _pkt(P.SEIPD, b"\x01" + b))
_OTHER = st.sampled_from([_pkt(P.LITERAL, b"b\x00\x00\x00\x00\x00Texte en clair."),
                          _pkt(P.SED, b"x" * 40), _pkt(P.COMPRESSED, b"\x00" + b"y" * 10),
                          _pkt(P.SIG, b"\x04\x00\x01\x08"), _pkt(P.MARKER, b"PGP"),
                          _pkt(P.SEIPD, b"\x02" + b"z" * 20), _pkt(P.AEAD, b"\x01aead")])
PACKETS = st.lists(st.one_of(_PKESK, _SEIPD, _OTHER), min_size=0, max_size=5).map(b"".join)
GOOD_PACKETS = st.tuples(st.lists(_PKESK, min_size=1, max_size=3), _SEIPD).map(lambda t: b"".join(t[0]) + t[1])


@st.composite
def openpgp_text(draw) -> bytes:
    """Armored (well or badly) or binary OpenPGP data, or text pretending to be."""
    data = draw(st.one_of(GOOD_PACKETS, PACKETS))
    form = draw(st.sampled_from(["armor", "armor", "no-crc", "bad-crc", "no-end", "binary", "junk"]))
    if form == "binary":
        return data
    if form == "junk":
        return draw(st.binary(max_size=200))
    text = A.armor(data or b"\x00", "PGP MESSAGE", checksum=form != "no-crc")
    if form == "bad-crc":
        text = text.replace(b"\n=", b"\n=AAAA\n=", 1)
    if form == "no-end":
        text = text.split(b"-----END")[0]
    return text


# --- MIME entities ------------------------------------------------------------------------------
_BOUNDARY = st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=? ", min_size=0, max_size=90)
_CTE = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "binary", "x-garbage", None])


def _encode(body: bytes, cte: str | None) -> bytes:
    if cte == "base64":
        return base64.encodebytes(body)
    if cte == "quoted-printable":
        return quopri.encodestring(body)
    return body


@st.composite
def leaf(draw) -> bytes:
    ctype = draw(st.sampled_from(["text/plain", "application/octet-stream", "application/pgp-encrypted",
                                  "text/html", "message/rfc822", "text/plain; charset=x-unknown"]))
    body = draw(st.one_of(openpgp_text(), st.just(b"Version: 1\n"), st.binary(max_size=120),
                          st.text(max_size=120).map(lambda t: t.encode("utf-8"))))
    cte = draw(_CTE)
    head = f"Content-Type: {ctype}\n" + (f"Content-Transfer-Encoding: {cte}\n" if cte else "")
    return head.encode() + b"\n" + _encode(body, cte)


def multipart(children: list[bytes], ctype: str, boundary: str, *, close: bool, protocol: str | None) -> bytes:
    params = f'; boundary="{boundary}"' + (f'; protocol="{protocol}"' if protocol else "")
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\n" + child + b"\n" for child in children)
    return f"Content-Type: {ctype}{params}\n\n".encode() + body + (b"--" + b + b"--\n" if close else b"")


@st.composite
def entity(draw, depth: int = 0) -> bytes:
    if depth >= 4 or draw(st.integers(0, 2)) == 0:
        return draw(leaf())
    kind = draw(st.sampled_from(["multipart/encrypted", "multipart/mixed", "multipart/signed",
                                 "multipart/alternative"]))
    if kind == "multipart/encrypted" and draw(st.booleans()):  # a PGP/MIME shape, maybe subtly off
        children = [b"Content-Type: application/pgp-encrypted\n\nVersion: 1\n",
                    b"Content-Type: application/octet-stream\n\n" + draw(openpgp_text())]
        children += draw(st.lists(entity(depth + 1), max_size=1))
    else:
        children = draw(st.lists(entity(depth + 1), max_size=3))
    boundary = draw(st.one_of(st.just("b%d" % depth), _BOUNDARY))
    protocol = draw(st.sampled_from(["application/pgp-encrypted", "application/pgp-signature", None]))
    return multipart(children, kind, boundary, close=draw(st.booleans()), protocol=protocol)


@st.composite
def message(draw) -> bytes:
    froms = draw(st.lists(st.sampled_from(["bruno@justice.gouv.fr", "Bruno <bruno@justice.gouv.fr>",
                                           "=?utf-8?b?YWxpY2VAaW50ZXJpZXVyLmdvdXYuZnI=?= <x@evil.example>",
                                           "", "a@b, c@d"]), min_size=0, max_size=2))
    head = "".join(f"From: {f}\n" for f in froms) + "To: alice@interieur.gouv.fr\nSubject: fuzz\n"
    head += "MIME-Version: 1.0\n" if draw(st.booleans()) else ""
    raw = head.encode() + draw(entity())
    if draw(st.booleans()):
        raw = raw.replace(b"\n", b"\r\n")
    return raw


ANY_MESSAGE = st.one_of(message(), st.binary(max_size=600))


# --- properties ------------------------------------------------------------------------------------
def _check_is_consistent(raw: bytes) -> encryption.EncryptionCheck:
    got = encryption.check(raw)
    assert isinstance(got, encryption.EncryptionCheck)
    if got.encrypted:
        assert got.format in ("pgp/mime", "inline") and got.reason == ""
        M.check_encrypted(got.payload)  # what the gateway passes on is exactly what it checked
        assert not got.malformed
    else:
        assert got.format == "none" and got.reason
    return got


@fuzz(250)
@given(ANY_MESSAGE)
def test_encryption_check_never_raises_and_is_consistent(raw):
    _check_is_consistent(raw)


@fuzz(200)
@given(ANY_MESSAGE)
def test_read_message_without_keys_never_raises_nor_shows_what_it_cannot_decrypt(raw):
    res = read_message(raw, *NO_KEYS, file="fuzz.eml")
    assert res.decrypted is False
    if res.encrypted:  # encrypted and no key: refused, nothing shown
        assert res.error and res.body == "" and res.attachments == []
    if res.error:
        assert res.body == "" and res.attachments == []


@fuzz(200)
@given(ANY_MESSAGE)
def test_what_the_gateway_calls_encrypted_the_reader_never_shows_in_clear(raw):
    if not encryption.check(raw).encrypted:
        return
    res = read_message(raw, *NO_KEYS)
    assert res.body == "" and res.attachments == [], (res.format, res.error, res.body[:80])


@fuzz(150)
@given(ANY_MESSAGE)
def test_what_the_check_does_not_call_malformed_the_crypto_stage_can_take_apart(raw):
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as the SMTP adapter hands it over
    if encryption.check(raw).malformed:
        return
    assert isinstance(protected_inner(raw), bytes)


# --- pathological shapes: bounded time and memory -------------------------------------------------
def nested(depth: int) -> bytes:
    out = [b"From: <bruno@justice.gouv.fr>\r\nSubject: deep\r\n"]
    out += [f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode() for i in range(depth)]
    out.append(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    out += [f"--b{i}--\r\n".encode() for i in reversed(range(depth))]
    return b"".join(out)


def many_parts(n: int) -> bytes:
    return (b'From: <bruno@justice.gouv.fr>\r\nContent-Type: multipart/mixed; boundary="x"\r\n\r\n'
            + b"--x\r\nContent-Type: text/plain\r\n\r\npart\r\n" * n + b"--x--\r\n")


PATHOLOGICAL = st.one_of(
    st.integers(1, 2000).map(nested),
    st.integers(1, 20_000).map(many_parts),
    st.integers(1, 4000).map(lambda n: b"From: <a@b.fr>\r\n" + b"X-H: v\r\n" * n + b"\r\nbody\r\n"),
    st.integers(1, 200_000).map(lambda n: b"Subject: " + b"s" * n + b"\r\n\r\nbody\r\n"),
    st.integers(1, 100_000).map(lambda n: b"Content-Type: multipart/mixed; boundary=\"" + b"-" * n + b"\"\r\n\r\n"),
    st.integers(1, 50_000).map(lambda n: b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
                               + b"hF4D" * n + b"\r\n-----END PGP MESSAGE-----\r\n"),
)


@fuzz(20, deadline=timedelta(seconds=10))  # up to 2 MB, 2000 levels: 1-2 s at worst on an idle machine
@given(PATHOLOGICAL)
@example(many_parts(20_000))  # read_message parsed all of them (~15 s) before counting
@example(nested(1000))
def test_pathological_messages_are_bounded_in_time(raw):
    got = _check_is_consistent(raw)
    read_message(raw, *NO_KEYS)
    if not got.malformed:
        protected_inner(raw)


def test_reading_50000_parts_is_refused_before_parsing():
    started = time.monotonic()
    res = read_message(many_parts(50_000), *NO_KEYS)
    assert res.error == "too many MIME parts"
    assert time.monotonic() - started < 1.5


MEMORY_CASES = {  # one of each pathological shape, sized so that tracemalloc's slowdown stays affordable
    "nested 150 deep": nested(150), "3000 parts": many_parts(3000),
    "4000 header fields": b"From: <a@b.fr>\r\n" + b"X-H: v\r\n" * 4000 + b"\r\nbody\r\n",
    "200 KB header line": b"Subject: " + b"s" * 200_000 + b"\r\n\r\nbody\r\n",
    "20 KB boundary": b"Content-Type: multipart/mixed; boundary=\"" + b"-" * 20_000 + b"\"\r\n\r\n",
    "200 KB inline armor": b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
                           + b"hF4D" * 50_000 + b"\r\n-----END PGP MESSAGE-----\r\n",
}


@pytest.mark.parametrize("name", MEMORY_CASES)
def test_pathological_messages_are_bounded_in_memory(name):
    """Peak Python allocation stays within a few MiB plus a small multiple of the input."""
    raw = MEMORY_CASES[name]
    limit = 16 * MiB + 20 * len(raw)
    bounded(limit, encryption.check, raw)
    bounded(limit, read_message, raw, *NO_KEYS)
