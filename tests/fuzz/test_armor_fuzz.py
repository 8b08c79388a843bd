"""Differential fuzzing of the armor decoder: ``armor.dearmor`` reads a block in place and decodes it
in pieces; the decoder it replaced read it whole (four copies of a big message). On armor made
well and armor bent every way (blank and CRLF lines, headers, checksum or none, padding in the
middle, stray characters, data after the checksum, limits), both answer the same: the same
binary, or a refusal of the same kind. Pieces are made small here so that every boundary case
(a piece ending inside a quad, on padding, on a blank) is met."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto import armor as A
from securemail.errors import LimitExceeded, MalformedMessage

from . import fuzz


def whole_string(data: bytes, *, max_size: int | None = None) -> tuple[str, bytes]:
    """The decoder before it read in pieces (commit 6de86de's armor.dearmor), kept as the oracle."""
    m = A._BEGIN.search(data)
    if not m:
        raise MalformedMessage("no OpenPGP armor found")
    label = m.group(1).decode("ascii")
    if label not in A.LABELS and not label.startswith("PGP MESSAGE, PART"):
        raise MalformedMessage("unknown OpenPGP armor type")
    end_marker = f"-----END {label}-----".encode()
    end = data.find(end_marker, m.end())
    if end < 0:
        raise MalformedMessage("OpenPGP armor has no END line")
    region = data[m.end():end]
    pos = region.find(b"\n") + 1  # the rest of the BEGIN line
    while True:  # armor headers (Version:, Comment:, ...) up to the blank line
        nl = region.find(b"\n", pos)
        line = region[pos:nl if nl >= 0 else len(region)]
        if nl < 0 or not A._HEADER.match(line.lstrip()):
            break
        pos = nl + 1
    body = region[pos:].rstrip()
    checksum: bytes | None = None
    last_nl = body.rfind(b"\n")
    last = body[last_nl + 1:].strip()
    if last.startswith(b"=") and len(last) == 5:
        checksum, body = last[1:], body[:last_nl + 1]
    inner = body.find(b"\n=") + 1 or (1 if body.lstrip().startswith(b"=") else 0)
    if inner and body[inner:].strip().find(b"\n") >= 0:  # a "=XXXX" line with data after it
        raise MalformedMessage("OpenPGP armor has data after its checksum")
    joined = body.translate(None, b" \t\r\n")
    if max_size is not None and len(joined) * 3 // 4 > max_size:
        raise LimitExceeded("OpenPGP message too large")
    try:
        binary = binascii.a2b_base64(joined, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("OpenPGP armor is not valid base64") from None
    if checksum is not None:
        try:
            want = int.from_bytes(binascii.a2b_base64(checksum, strict_mode=True), "big")
        except (binascii.Error, ValueError):
            raise MalformedMessage("OpenPGP armor checksum is not valid base64") from None
        if A.crc24(binary) != want:
            raise MalformedMessage("OpenPGP armor checksum does not match")
    if not binary:
        raise MalformedMessage("OpenPGP armor is empty")
    return label, binary


def named(fn):
    """fn()'s (label, bytes of the binary), or the message of its refusal."""
    try:
        label, binary = fn()
        return label, bytes(binary)
    except (MalformedMessage, LimitExceeded) as e:
        return type(e).__name__ + ": " + str(e)


def outcome(fn, data: bytes, max_size):
    try:
        return fn(data, max_size=max_size)
    except (MalformedMessage, LimitExceeded) as e:
        return type(e).__name__


BENDS = st.sampled_from([
    lambda b: b, lambda b: b.replace(b"\n", b"\r\n"), lambda b: b.replace(b"\n", b"\n\n", 3),
    lambda b: b.replace(b"\n=", b"\n \t="), lambda b: b[: len(b) // 2] + b"=" + b[len(b) // 2:],
    lambda b: b[: len(b) // 3] + b"*" + b[len(b) // 3:], lambda b: b.replace(b"\n\n", b"\nVersion: x\n\n", 1),
    lambda b: b.replace(b"-----END", b"AAAA\n-----END"), lambda b: b.replace(b"-----END", b"=AAAA\nAAAA\n-----END"),
    lambda b: b"text before\n" + b + b"\ntext after", lambda b: b.replace(b"\n", b" \n"),
])


@pytest.mark.parametrize("step", [4, 7, 64, 1 << 20])
@fuzz(400)
@given(data=st.binary(min_size=0, max_size=3000), bend=BENDS, checksum=st.booleans(),
       max_size=st.sampled_from([None, 10, 1000]))
def test_read_in_pieces_answers_as_read_whole(step, data, bend, checksum, max_size):
    armored = A.armor(data) if data else b"-----BEGIN PGP MESSAGE-----\n\n-----END PGP MESSAGE-----\n"
    if not checksum:
        armored = b"\n".join(line for line in armored.split(b"\n") if not (line.startswith(b"=") and len(line) == 5))
    bent = bend(armored)
    saved, A._DECODE_STEP = A._DECODE_STEP, step
    try:
        assert outcome(A.dearmor, bent, max_size) == outcome(whole_string, bent, max_size)
        into_one = outcome(lambda d, max_size: A.dearmor(d, max_size=max_size, buffer=True), bent, max_size)
        assert (into_one if isinstance(into_one, str) else (into_one[0], bytes(into_one[1]))) \
            == outcome(whole_string, bent, max_size)   # decoded into one bytearray: the same
        if max_size is None:   # decoded over the armor itself: the same binary, the same refusal by name
            assert named(lambda: A.dearmor(bytearray(b"x\n" + bent), start=2, over=True)) \
                == named(lambda: A.dearmor(b"x\n" + bent, start=2))
    finally:
        A._DECODE_STEP = saved


def in_place(data: bytes, *, max_size=None, start: int = 0, end: int | None = None):
    """dearmor of ``data[start:end]`` read in place, as the bridge's reader reads a message's part."""
    return A.dearmor(data, max_size=max_size, start=start, end=end)


AROUND = st.sampled_from([(b"", b""), (b"Content-Type: x\r\n\r\n", b"\r\n--b--\r\n"), (b"no line end", b""),
                          (b"-----BEGIN PGP MESSAGE-----\n\nAAAA\n-----END PGP MESSAGE-----\n", b""),
                          (b"x\n", b"-----END PGP MESSAGE-----\n")])


@fuzz(400)
@given(data=st.binary(min_size=0, max_size=2000), bend=BENDS, around=AROUND, max_size=st.sampled_from([None, 1000]))
def test_a_part_read_in_place_answers_as_its_copy(data, bend, around, max_size):
    """dearmor and unarmor_if_needed of data[start:end] give what they give for the copy of that
    part: whatever comes before it (a BEGIN line of its own, a line not ended) or after it."""
    armored = bend(A.armor(data) if data else b"-----BEGIN PGP MESSAGE-----\n\n-----END PGP MESSAGE-----\n")
    before, after = around
    whole, start, end = before + armored + after, len(before), len(before) + len(armored)
    part = whole[start:end]

    def copied(d, *, max_size=None):
        return A.dearmor(part, max_size=max_size)

    assert outcome(lambda d, max_size: in_place(whole, max_size=max_size, start=start, end=end), whole, max_size) \
        == outcome(copied, part, max_size)
    assert A.is_armored(whole, start, end) == A.is_armored(part)
    if outcome(copied, part, max_size) == outcome(copied, part, None) and not isinstance(outcome(copied, part, None), str):
        assert A.unarmor_if_needed(whole, start, end) == A.unarmor_if_needed(part)
    binary = b"\xc1binary" + data
    assert A.unarmor_if_needed(before + binary + after, start, start + len(binary)) == binary


@pytest.mark.parametrize("step", [4, 7, 64, 1 << 20])
@fuzz(300)
@given(data=st.binary(min_size=1, max_size=3000), at=st.integers(0, 60), line=st.sampled_from(
    [b"=AAAA", b"=", b"==", b"=ABC=", b" =AAAA", b"=AAAA "]), checksum=st.booleans())
def test_a_checksum_line_with_data_after_it_is_refused_by_name(step, data, at, line, checksum):
    """Good armor is no longer scanned for a "=XXXX" line followed by more data: strict base64
    refuses it, and the refusal names it, wherever it falls in the pieces decoded."""
    armored = A.armor(data)
    if not checksum:
        armored = b"\n".join(x for x in armored.split(b"\n") if not (x.startswith(b"=") and len(x) == 5))
    lines = armored.split(b"\n")
    body = [i for i, x in enumerate(lines) if i > 1 and x and not x.startswith(b"-----") and not
            (x.startswith(b"=") and len(x) == 5)]
    if len(body) < 1:
        return
    i = body[min(at, len(body) - 1)]
    bent = b"\n".join(lines[:i] + [line] + lines[i:])   # data (at least the line at i) after it
    saved, A._DECODE_STEP = A._DECODE_STEP, step
    try:
        for max_size in (None, 1 << 20):
            with pytest.raises(MalformedMessage, match="after its checksum"):
                A.dearmor(bent, max_size=max_size)
        with pytest.raises(MalformedMessage, match="after its checksum"):
            A.dearmor(bytearray(b"x\n" + bent), start=2, over=True)
    finally:
        A._DECODE_STEP = saved


@pytest.mark.parametrize("step", [4, 8, 16])
@pytest.mark.parametrize("over", [False, True])
def test_base64_after_padding_is_refused_across_a_piece_of_blanks_only(step, over):
    """Padding, then a whole piece of nothing but blanks, then more base64: refused, as the same
    armor read whole refuses it (a piece of blanks once made the decoder forget the padding)."""
    body = b"QUI=\n" + b" " * (3 * step - 5) + b"\nQUJD\n"
    text = b"x\n-----BEGIN PGP MESSAGE-----\n\n" + body + b"-----END PGP MESSAGE-----\n"
    assert outcome(whole_string, text[2:], None) == "MalformedMessage"
    saved, A._DECODE_STEP = A._DECODE_STEP, step
    try:
        with pytest.raises(MalformedMessage, match="not valid base64"):
            A.dearmor(bytearray(text), start=2, over=True) if over else A.dearmor(text[2:])
    finally:
        A._DECODE_STEP = saved
