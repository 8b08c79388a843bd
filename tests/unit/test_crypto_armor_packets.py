"""ASCII armor and packet framing: strict decoding, bounded work, one exception root.

No keys are needed here: packets are built by hand (old and new headers, partial
lengths) so every framing rule is exercised byte by byte. The property tests
feed arbitrary bytes and assert that only securemail errors come out.
"""

from __future__ import annotations

import base64
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.crypto import armor as A
from securemail.crypto import packets as P
from securemail.errors import (IntegrityError, LimitExceeded, MalformedMessage, NotEncrypted,
                               SecureMailError)

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
STRUCTURED = settings(PROPERTY, max_examples=100)  # each example builds several packets

BEGIN, END = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"


def armored(body: bytes, *, crc: bytes | None = None, eol: bytes = b"\n") -> bytes:
    lines = [BEGIN, b"", body] + ([b"=" + crc] if crc is not None else []) + [END]
    return eol.join(lines) + eol


def crc_line(data: bytes) -> bytes:
    return base64.b64encode(A.crc24(data).to_bytes(3, "big"))


# --- hand-made packet headers ---------------------------------------------------
def old_packet(tag: int, body: bytes, length_type: int) -> bytes:
    """Old-format packet (RFC 4880 §4.2.1); length_type 3 is indeterminate."""
    ctb = 0x80 | (tag << 2) | length_type
    if length_type == 3:
        return bytes([ctb]) + body
    return bytes([ctb]) + len(body).to_bytes((1, 2, 4)[length_type], "big") + body


def new_packet_5(tag: int, body: bytes) -> bytes:
    """New format with the five-octet length form, even for short bodies."""
    return bytes([0xC0 | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def partial_packet(tag: int, chunks: list[bytes], last: bytes) -> bytes:
    """New format with partial body lengths: each chunk's size must be a power of two."""
    out = bytes([0xC0 | tag])
    for c in chunks:
        exp = len(c).bit_length() - 1
        assert len(c) == 1 << exp and exp <= 30
        out += bytes([0xE0 | exp]) + c
    return out + P.write_packet(tag, last)[1:]  # reuse write_packet's definite length form


def pkesk(keyid: bytes = b"\x11" * 8) -> bytes:
    return P.write_packet(P.PKESK, b"\x03" + keyid + b"\x12" + os.urandom(40))


def seipd(version: int = 1, size: int = 60) -> bytes:
    return P.write_packet(P.SEIPD, bytes([version]) + os.urandom(size))


LITERAL = P.write_packet(P.LITERAL, b"b\x00\x00\x00\x00\x00hello")


# --- armor ------------------------------------------------------------------------
@pytest.mark.parametrize("label", A.LABELS)
@pytest.mark.parametrize("size", [1, 2, 3, 47, 48, 49, 1000])
def test_armor_round_trip(label, size):
    data = os.urandom(size)
    out = A.armor(data, label)
    assert out.startswith(f"-----BEGIN {label}-----\n".encode())
    assert all(len(line) <= 64 for line in out.splitlines())
    assert A.is_armored(out)
    assert A.dearmor(out) == (label, data)


def test_armor_without_checksum_round_trips():
    data = os.urandom(100)
    out = A.armor(data, checksum=False)
    assert b"\n=" not in out
    assert A.dearmor(out) == ("PGP MESSAGE", data)


def test_armor_rejects_unknown_label():
    with pytest.raises(ValueError):
        A.armor(b"x", "PGP SOMETHING")


def test_dearmor_accepts_crlf_headers_and_surrounding_text():
    data = os.urandom(200)
    b64 = base64.b64encode(data)
    text = (b"Hello,\r\nsee below.\r\n" + BEGIN + b"\r\nVersion: GnuPG v2\r\nComment: a: b\r\n\r\n"
            + b64[:64] + b"\r\n" + b64[64:] + b"\r\n=" + crc_line(data) + b"\r\n" + END
            + b"\r\n-- \r\nsignature block\r\n")
    assert A.dearmor(text) == ("PGP MESSAGE", data)
    assert A.unarmor_if_needed(A.armor(data)) == data
    assert A.unarmor_if_needed(data) == data  # binary passes through


def test_crc_mismatch_is_malformed():
    data = os.urandom(64)
    bad = bytearray(data)
    bad[0] ^= 1
    with pytest.raises(MalformedMessage, match="checksum"):
        A.dearmor(armored(base64.b64encode(data), crc=crc_line(bytes(bad))))


def test_checksum_that_is_not_base64_is_malformed():
    with pytest.raises(MalformedMessage):
        A.dearmor(armored(base64.b64encode(b"abc"), crc=b"!!!!"))


def test_data_after_checksum_is_malformed():
    data = b"abcdef"
    text = BEGIN + b"\n\n" + base64.b64encode(data) + b"\n=" + crc_line(data) + b"\nQUJD\n" + END
    with pytest.raises(MalformedMessage, match="after its checksum"):
        A.dearmor(text)


def test_missing_end_line_is_malformed():
    with pytest.raises(MalformedMessage, match="END"):
        A.dearmor(BEGIN + b"\n\n" + base64.b64encode(b"abc") + b"\n")
    mismatched = armored(base64.b64encode(b"abc")).replace(b"END PGP MESSAGE", b"END PGP SIGNATURE")
    with pytest.raises(MalformedMessage, match="END"):
        A.dearmor(mismatched)


@pytest.mark.parametrize("body", [b"not*base64!", b"QUJD\xff\xfe", b"QUJ", b"QU=JD"])
def test_body_that_is_not_base64_is_malformed(body):
    with pytest.raises(MalformedMessage, match="base64"):
        A.dearmor(armored(body))


@pytest.mark.parametrize("text", [
    b"", b"just text", b"-----BEGIN PGP NONSENSE-----\n\nQUJD\n-----END PGP NONSENSE-----\n",
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nhi\n"])
def test_no_or_unknown_armor_is_malformed(text):
    with pytest.raises(MalformedMessage):
        A.dearmor(text)


def test_empty_armor_is_malformed():
    with pytest.raises(MalformedMessage, match="empty"):
        A.dearmor(armored(b""))


def test_max_size_is_enforced_before_decoding():
    data = os.urandom(3000)
    with pytest.raises(LimitExceeded):
        A.dearmor(A.armor(data), max_size=1000)
    assert A.dearmor(A.armor(data), max_size=3000)[1] == data


def test_ten_megabyte_single_line_is_decoded_in_bounded_time():
    data = os.urandom(7_500_000)
    line = base64.b64encode(data)
    assert len(line) == 10_000_000
    t0 = time.perf_counter()
    assert A.dearmor(armored(line, crc=crc_line(data)))[1] == data
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("text", [
    BEGIN + b"\n\n" + b"A" * 10_000_000,                      # no END line
    b"-----BEGIN PGP " + b"A" * 10_000_000 + b"\n",            # BEGIN line that never closes
    b"-----BEGIN PGP " + b"A " * 5_000_000 + b"-----X\n",     # backtracking bait
    BEGIN + b"\n\n" + b" " * 10_000_000 + b"\n" + END,          # only whitespace
    BEGIN + b"\n\n" + b"*" * 10_000_000 + b"\n" + END,          # one huge invalid line
], ids=["no-end", "open-begin", "begin-backtrack", "whitespace", "invalid-line"])
def test_ten_megabytes_of_junk_fail_fast(text):
    t0 = time.perf_counter()
    with pytest.raises(MalformedMessage):
        A.dearmor(text)
    assert time.perf_counter() - t0 < 5


# --- packet framing ---------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 191, 192, 193, 8383, 8384, 70_000])
def test_write_packet_lengths_round_trip(size):
    body = os.urandom(size)
    raw = P.write_packet(P.LITERAL, body)
    header = len(raw) - size
    assert header == (2 if size < 192 else 3 if size < 8384 else 6)
    (pkt,) = P.read_packets(raw)
    assert (pkt.tag, pkt.body, pkt.raw, pkt.name) == (P.LITERAL, body, raw, "literal data")


@pytest.mark.parametrize("length_type", [0, 1, 2])
def test_old_format_definite_lengths(length_type):
    body = os.urandom(200 if length_type else 100)
    raw = old_packet(P.SIG, body, length_type)
    (pkt,) = P.read_packets(raw)
    assert (pkt.tag, pkt.body, pkt.raw) == (P.SIG, body, raw)


def test_old_format_indeterminate_length_runs_to_the_end():
    first = old_packet(P.PKESK, b"\x03" + b"\x22" * 8 + b"\x01" + b"x" * 20, 0)
    last = old_packet(P.COMPRESSED, b"\x01" + b"z" * 500, 3)
    pkts = P.read_packets(first + last)
    assert [p.tag for p in pkts] == [P.PKESK, P.COMPRESSED]
    assert pkts[1].body == b"\x01" + b"z" * 500


def test_new_format_five_octet_length():
    (pkt,) = P.read_packets(new_packet_5(P.UID, b"A <a@b>"))
    assert (pkt.tag, pkt.body) == (P.UID, b"A <a@b>")


def test_partial_body_lengths_are_joined():
    chunks = [os.urandom(512), os.urandom(1024), os.urandom(1)]
    last = os.urandom(300)
    raw = partial_packet(P.SEIPD, chunks, last)
    pkts = P.read_packets(raw + LITERAL)
    assert pkts[0].tag == P.SEIPD and pkts[0].body == b"".join(chunks) + last
    assert pkts[0].raw == raw and pkts[1].raw == LITERAL


def test_partial_body_with_empty_final_chunk():
    raw = partial_packet(P.LITERAL, [b"x" * 512], b"")
    (pkt,) = P.read_packets(raw)
    assert pkt.body == b"x" * 512


def test_mixed_formats_in_one_stream():
    stream = (old_packet(P.PKESK, b"\x03" + b"\x01" * 8 + b"\x01" + b"k" * 30, 1)
              + new_packet_5(P.SKESK, b"\x04\x09\x03\x08" + b"s" * 9)
              + P.write_packet(P.MARKER, b"PGP")
              + partial_packet(P.SEIPD, [b"e" * 1024], b"e" * 10))
    assert [p.tag for p in P.read_packets(stream)] == [P.PKESK, P.SKESK, P.MARKER, P.SEIPD]


def test_every_truncation_is_malformed_or_a_clean_prefix():
    stream = (old_packet(P.PKESK, b"\x03" + b"\x01" * 8 + b"\x01" + b"k" * 30, 1)
              + P.write_packet(P.SIG, b"s" * 300)
              + partial_packet(P.SEIPD, [b"e" * 512, b"f" * 2], b"g" * 9)
              + new_packet_5(P.UID, b"u" * 20))
    boundaries = {0}
    pos = 0
    for pkt in P.read_packets(stream):
        pos += len(pkt.raw)
        boundaries.add(pos)
    for cut in range(1, len(stream)):
        if cut in boundaries:
            assert b"".join(p.raw for p in P.read_packets(stream[:cut])) == stream[:cut]
        else:
            with pytest.raises(MalformedMessage):
                P.read_packets(stream[:cut])


@pytest.mark.parametrize("data,why", [
    (b"", "empty"),
    (b"\x00\x01\x02", "not an OpenPGP packet"),
    (b"\x7f" + b"x" * 10, "not an OpenPGP packet"),
    (b"\xc0\x01x", "reserved"),                 # new format, tag 0
    (b"\x80\x01x", "reserved"),                 # old format, tag 0
    (b"\xcb", "truncated"),                     # header without length
    (b"\xcb\xff\x00\x01", "truncated"),          # five-octet length cut short
    (b"\xcb\xff\xff\xff\xff\xff" + b"x" * 100, "truncated"),  # 4 GiB claimed
    (b"\xd2\xfe" + b"x" * 100, "truncated"),    # partial chunk of 1 GiB claimed
    (b"\xd2\xe1ab", "truncated"),               # partial chunk then nothing
    (b"\xcb\xc5", "truncated"),                 # two-octet length cut short
    (b"\xad\x01", "truncated"),                 # old two-octet length cut short
    (b"\xac\x10abc", "truncated"),              # old one-octet length, short body
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_framing(data, why):
    with pytest.raises(MalformedMessage, match=why):
        P.read_packets(data)


def test_too_many_packets_is_a_limit():
    with pytest.raises(LimitExceeded):
        P.read_packets(P.write_packet(P.MARKER, b"PGP") * 11, max_packets=10)
    assert len(P.read_packets(P.write_packet(P.MARKER, b"PGP") * 10, max_packets=10)) == 10


def test_too_many_partial_chunks_is_a_limit():
    raw = b"\xcb" + b"\xe0x" * (P.MAX_PACKETS + 2) + b"\x00"
    t0 = time.perf_counter()
    with pytest.raises(LimitExceeded):
        P.read_packets(raw)
    assert time.perf_counter() - t0 < 5


# --- check_encrypted: the shape check before any decryption -----------------------
def test_pkesk_then_seipd_is_accepted():
    shape = P.check_encrypted(pkesk(b"\xAA" * 8) + pkesk(b"\x00" * 8) + seipd())
    assert len(shape.pkesks) == 2 and not shape.skesks and shape.seipd.tag == P.SEIPD
    assert shape.recipient_keyids == ("AA" * 8, "00" * 8)


def test_skesk_markers_and_padding_are_accepted():
    skesk = P.write_packet(P.SKESK, b"\x04\x09\x03\x08" + b"s" * 9)
    data = (P.write_packet(P.MARKER, b"PGP") + skesk + pkesk() + seipd()
            + P.write_packet(P.PADDING, b"\x00" * 16))
    shape = P.check_encrypted(data)
    assert len(shape.skesks) == 1 and len(shape.pkesks) == 1


def test_seipd_with_partial_lengths_is_accepted():
    body = b"\x01" + os.urandom(1023)
    shape = P.check_encrypted(pkesk() + partial_packet(P.SEIPD, [body], os.urandom(50)))
    assert shape.seipd.body[:1024] == body


@pytest.mark.parametrize("data", [
    P.write_packet(P.SED, os.urandom(50)),
    pkesk() + P.write_packet(P.SED, os.urandom(50)),
    pkesk() + pkesk() + P.write_packet(P.SED, os.urandom(50)),
    LITERAL + P.write_packet(P.SED, os.urandom(50)),
], ids=["sed-alone", "pkesk-sed", "two-pkesk-sed", "literal-sed"])
def test_sed_without_mdc_is_refused(data):
    with pytest.raises(IntegrityError, match="integrity"):
        P.check_encrypted(data)


@pytest.mark.parametrize("data", [
    LITERAL,
    P.write_packet(P.COMPRESSED, b"\x00" + LITERAL),
    P.write_packet(P.SIG, b"\x04" + os.urandom(40)),
    P.write_packet(P.OPS, b"\x03\x00\x0a\x16" + b"\x01" * 8 + b"\x01") + LITERAL,
    seipd(),                                           # integrity-protected but no key packet
    P.write_packet(P.MARKER, b"PGP") + LITERAL,
    pkesk() + seipd(version=2),                        # SEIPD v2 (RFC 9580) not supported
    pkesk() + P.write_packet(P.SEIPD, b""),            # empty SEIPD
    pkesk() + LITERAL,
    pkesk() + P.write_packet(P.COMPRESSED, b"\x01xx"),
], ids=["literal", "compressed", "signature", "signed-literal", "seipd-no-esk", "marker-literal",
        "seipd-v2", "seipd-empty", "pkesk-literal", "pkesk-compressed"])
def test_not_encrypted_is_refused(data):
    with pytest.raises(NotEncrypted):
        P.check_encrypted(data)


def test_aead_packet_is_refused():
    with pytest.raises(NotEncrypted, match="AEAD"):
        P.check_encrypted(pkesk() + P.write_packet(P.AEAD, b"\x01\x09\x01\x06" + os.urandom(60)))


@pytest.mark.parametrize("tail", [LITERAL, seipd(), pkesk(), P.write_packet(P.SIG, b"\x04xx")],
                         ids=["literal", "second-seipd", "pkesk", "signature"])
def test_trailing_packet_after_seipd_is_refused(tail):
    with pytest.raises(MalformedMessage, match="after the encrypted"):
        P.check_encrypted(pkesk() + seipd() + tail)


def test_key_packets_without_data_are_malformed():
    with pytest.raises(MalformedMessage, match="no encrypted data"):
        P.check_encrypted(pkesk() + pkesk())


def test_describe_names_packets():
    assert P.describe(P.read_packets(LITERAL * 8)).endswith("literal data, ...")


# --- properties ---------------------------------------------------------------------
def _only_ours(fn, data):
    try:
        fn(data)
    except SecureMailError:
        pass  # any other exception type fails the test


@PROPERTY
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_securemail_errors(data):
    _only_ours(P.read_packets, data)
    _only_ours(P.check_encrypted, data)
    _only_ours(A.dearmor, data)
    _only_ours(A.unarmor_if_needed, data)


_ARMOR_LINE = st.one_of(
    st.binary(max_size=80),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=: -\r",
            max_size=80).map(str.encode))


@STRUCTURED
@given(st.sampled_from([BEGIN, b"-----BEGIN PGP PUBLIC KEY BLOCK-----",
                        b"-----BEGIN PGP MESSAGE, PART 1/2-----"]),
       st.lists(_ARMOR_LINE, max_size=12), st.booleans())
def test_armor_like_text_raises_only_securemail_errors(begin, lines, with_end):
    end = begin.replace(b"BEGIN", b"END")
    text = b"\n".join([begin, *lines] + ([end] if with_end else []))
    try:
        label, binary = A.dearmor(text)
    except SecureMailError:
        return
    assert binary and label in begin.decode()


_TAGS = st.sampled_from([P.PKESK, P.SIG, P.SKESK, P.OPS, P.COMPRESSED, P.SED, P.MARKER, P.LITERAL,
                         P.SEIPD, P.MDC, P.AEAD, P.PADDING, P.UID, 60])


@STRUCTURED
@given(st.lists(st.tuples(_TAGS, st.binary(max_size=300)), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=4000))
def test_packet_streams_and_their_truncations(packets, cut):
    stream = b"".join(P.write_packet(tag, body) for tag, body in packets)
    parsed = P.read_packets(stream)
    assert [(p.tag, p.body) for p in parsed] == packets
    _only_ours(P.read_packets, stream[:cut])
    _only_ours(P.check_encrypted, stream[:cut])


@STRUCTURED
@given(st.lists(st.sampled_from(["pkesk", "skesk", "seipd", "seipd2", "sed", "aead", "literal",
                                 "compressed", "marker", "padding", "sig"]), min_size=1, max_size=6))
def test_check_encrypted_accepts_exactly_esks_then_one_seipd_v1(kinds):
    build = {"pkesk": pkesk, "skesk": lambda: P.write_packet(P.SKESK, b"\x04\x09\x03\x08" + b"s" * 9),
             "seipd": seipd, "seipd2": lambda: seipd(version=2),
             "sed": lambda: P.write_packet(P.SED, b"x" * 30),
             "aead": lambda: P.write_packet(P.AEAD, b"\x01x"),
             "literal": lambda: LITERAL, "compressed": lambda: P.write_packet(P.COMPRESSED, b"\x00"),
             "marker": lambda: P.write_packet(P.MARKER, b"PGP"),
             "padding": lambda: P.write_packet(P.PADDING, b"\x00"),
             "sig": lambda: P.write_packet(P.SIG, b"\x04xx")}
    data = b"".join(build[k]() for k in kinds)
    core = [k for k in kinds if k not in ("marker", "padding")]
    esks = 0
    while esks < len(core) and core[esks] in ("pkesk", "skesk"):
        esks += 1
    good = esks > 0 and core[esks:] == ["seipd"]
    if good:
        assert len(P.check_encrypted(data).pkesks) == core.count("pkesk")
    else:
        expected = IntegrityError if core[esks:esks + 1] == ["sed"] else SecureMailError
        with pytest.raises(expected):
            P.check_encrypted(data)


@pytest.mark.parametrize("n", [0, 1, 47, 48, 49, 96, 48 * 1024 - 1, 48 * 1024, 48 * 1024 + 1, 200_000])
def test_armor_in_parts_is_the_armor_of_the_whole(n):
    import random
    data = os.urandom(n)
    whole = A.armor(data)
    lines = whole.split(b"\n")
    assert lines[:2] == [b"-----BEGIN PGP MESSAGE-----", b""] and lines[-2:] == [b"-----END PGP MESSAGE-----", b""]
    body = lines[2:-3]  # base64 lines, then the checksum line
    assert all(len(x) == 64 for x in body[:-1]) and (n == 0 or 0 < len(body[-1]) <= 64)
    rnd = random.Random(n)
    for _ in range(5):
        cuts = sorted(rnd.randint(0, n) for _ in range(rnd.randint(0, 6)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
        assert A.armor_parts(parts) == whole
    if n:
        assert A.dearmor(whole) == ("PGP MESSAGE", data)
