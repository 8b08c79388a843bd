"""Differential fuzzing of ``shell.part_head`` and ``shell.head_only`` against the email parser
they replaced for ASCII header blocks (kept here as the oracles): part_head reads the Content-Type
and Content-Transfer-Encoding of a PGP/MIME part straight from its header fields (as commit
211f1b1's ``_part_head`` read them with compat32); head_only stores the fields as the feed
parser stores them, without the feed parser. Blocks of any fields, folds, cases, duplicates,
parameters, stray slashes and semicolons, blanks and bytes beyond ASCII: both give the same
answer, or both none."""

from __future__ import annotations

import random
from email import policy

from hypothesis import given
from hypothesis import strategies as st

from email.message import EmailMessage
from email.parser import BytesHeaderParser

from securemail.errors import SecureMailError
from securemail.mail import shell
from securemail.mail.headers import HEADER_BYTES, parse_header_block
from securemail.mail.read import ReadResult

from . import fuzz


def parser_head(raw: bytes, how):
    """head_only as it was: the block checked by our parser, then read by the email parser."""
    try:
        block = parse_header_block(raw)
    except SecureMailError:
        return None
    return BytesHeaderParser(policy=how).parsebytes(raw[:block.size] + b"\r\n"), block.body_start


def oracle(raw: bytes, part: tuple[int, int]):
    start, end = part
    found = parser_head(raw[start:min(end, start + HEADER_BYTES + 4)], policy.compat32)
    if found is None:
        return None
    msg, body_start = found
    return msg.get_content_type(), str(msg.get("Content-Transfer-Encoding", "7bit")).strip().lower(), body_start


NAMES = st.sampled_from([b"Content-Type", b"content-type", b"CONTENT-TYPE", b"Content-Transfer-Encoding",
                         b"content-transfer-encoding", b"Content-Description", b"X-Other", b"Content-Type "])
VALUES = st.lists(st.sampled_from([b"application/pgp-encrypted", b"application/octet-stream", b"text/plain",
                                   b"base64", b"7bit", b" BASE64 ", b"Quoted-Printable", b"; name=\"a;b\"",
                                   b"/", b"a/b/c", b"", b" ", b"\t", b"\x1c", b"(comment)", b"\xc3\xa9",
                                   b"\r\n ", b"\r\n\t", b"=?utf-8?q?x?=", b"noslash", b";"]), max_size=6)
FIELDS = st.lists(st.tuples(NAMES, VALUES, st.sampled_from([b": ", b":", b":\t", b"  :"])), max_size=6)


@fuzz(800)
@given(fields=FIELDS, body=st.sampled_from([b"", b"\r\n", b"\r\nbody\r\n", b"body", b"\r\n\r\nx"]),
       lead=st.sampled_from([b"", b"\r\n", b"junk"]))
def test_read_from_the_fields_as_the_parser_reads_them(fields, body, lead):
    head = b"".join(name + sep + b"".join(value) + b"\r\n" for name, value, sep in fields)
    raw = lead + head + body
    part = (len(lead), len(raw))
    assert shell.part_head(raw, part) == oracle(raw, part)


def test_the_canonical_parts():
    raw = (b"--b\r\nContent-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version\r\n\r\n"
           b"Version: 1\r\n--b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--b--\r\n")
    first, second = (5, raw.index(b"--b\r\nContent-Type: application/oct")), (raw.index(b"Content-Type: application/oct"), len(raw))
    assert shell.part_head(raw, first)[:2] == ("application/pgp-encrypted", "7bit") == oracle(raw, first)[:2]
    assert shell.part_head(raw, second)[:2] == ("application/octet-stream", "base64") == oracle(raw, second)[:2]


def test_the_fields_path_is_taken_and_agrees():
    """The same comparison on 4,000 seeded blocks, counting how many were read from the fields
    (clean and ASCII) and how many types they gave: the comparison is not of Nones alone."""
    rng = random.Random(3)
    names = [b"Content-Type", b"content-type", b"Content-Transfer-Encoding", b"X-Other", b"Content-Type "]
    values = [b"application/pgp-encrypted", b"text/plain", b"base64", b" BASE64 ", b"; name=\"a;b\"", b"/",
              b"a/b/c", b"", b" ", b"\x1c", b"\xc3\xa9", b"\r\n ", b"noslash", b";"]
    read, types = 0, set()
    for _ in range(4000):
        head = b"".join(rng.choice(names) + rng.choice([b": ", b":"]) + b"".join(rng.choices(values, k=rng.randrange(4)))
                        + b"\r\n" for _ in range(rng.randrange(4)))
        raw = head + b"\r\nbody\r\n"
        got = shell.part_head(raw, (0, len(raw)))
        assert got == oracle(raw, (0, len(raw))), raw
        if got is not None and raw[:raw.find(b"\r\n\r\n")].isascii():
            read += 1
            types.add(got[0])
    assert read > 1000 and {"application/pgp-encrypted", "text/plain"} <= types and len(types) >= 3


def reading(found):
    """All a reader of head_only's answer can see: each field as the policy gives it, the
    content type and boundary, the payload, the defects, where the body starts."""
    if found is None:
        return None
    msg, body_start = found

    def answer(ask):   # the email package raises on some values ("<" as a From): the same, both ways
        try:
            return ask()
        except Exception as e:  # noqa: BLE001
            return type(e).__name__
    return (answer(lambda: [(k, str(v), type(v).__name__) for k, v in msg.items()]),
            answer(msg.get_content_type), answer(msg.get_boundary), answer(lambda: msg.get_param("charset")),
            msg.get_payload(), [type(d).__name__ for d in msg.defects], msg.is_multipart(), body_start)


HEAD_NAMES = NAMES | st.sampled_from([b"From", b"Subject", b"To", b"Date", b"Message-ID", b"Securemail-Status"])
HEAD_VALUES = st.lists(st.sampled_from([b"multipart/encrypted", b"; boundary=\"b1\"", b"; boundary=b2", b"; BOUNDARY=x",
                                        b"; charset=utf-8", b"Ann <ann@example.org>", b"=?utf-8?q?R=C3=A9union?=",
                                        b"a@b", b",", b"<", b"\"q\"", b"(c)", b"\xc3\xa9", b"\r\n ", b"x", b" ",
                                        b";", b"text/plain", b"Mon, 1 Jan 2024 00:00:00 +0000"]), max_size=6)


@fuzz(800)
@given(fields=st.lists(st.tuples(HEAD_NAMES, HEAD_VALUES, st.sampled_from([b": ", b":", b"  :"])), max_size=8),
       body=st.sampled_from([b"", b"\r\n", b"\r\nbody\r\n", b"body"]), compat=st.booleans())
def test_head_only_reads_as_the_parser_reads(fields, body, compat):
    raw = b"".join(name + sep + b"".join(value) + b"\r\n" for name, value, sep in fields) + body
    how = policy.compat32 if compat else ReadResult(file="")._policy
    assert reading(shell.head_only(raw, how)) == reading(parser_head(raw, how))


def test_head_only_on_seeded_blocks_takes_its_own_path_and_agrees():
    """3,000 seeded blocks under the reader's policy: the same reading, and most of them (clean
    ASCII) read without the feed parser, with several content types and boundaries among them."""
    rng = random.Random(5)
    names = [b"Content-Type", b"From", b"Subject", b"content-type", b"X-Other"]
    values = [b"multipart/encrypted", b"; boundary=\"b1\"", b"; protocol=\"application/pgp-encrypted\"",
              b"text/plain", b"Ann <ann@example.org>", b"=?utf-8?q?R=C3=A9union?=", b"\r\n ", b";", b"\xc3\xa9"]
    how, own, seen = ReadResult(file="")._policy, 0, set()
    for _ in range(3000):
        raw = b"".join(rng.choice(names) + b": " + b"".join(rng.choices(values, k=rng.randrange(1, 4))) + b"\r\n"
                       for _ in range(rng.randrange(1, 5))) + b"\r\nbody"
        got = reading(shell.head_only(raw, how))
        assert got == reading(parser_head(raw, how)), raw
        if got is not None and raw.isascii():
            own += 1
            seen.add((got[1], got[2]))
    assert own > 1000 and len(seen) >= 4, (own, seen)


def policy_type(value: str) -> tuple[str, str | None]:
    msg = EmailMessage(policy=ReadResult(file="")._policy)
    msg.set_raw("Content-Type", value)
    return msg.get_content_type(), msg.get_boundary()


TYPE_PIECES = st.sampled_from(["multipart/encrypted", "Multipart/Encrypted", "text/plain", "a/b/c", "noslash", " ", "\t",
                               ";", "; ", "boundary", "BOUNDARY", "protocol", "boundary*", "=", '"', "'", "\\", "x",
                               "=?utf-8?q?x?=", "(c)", "%41", "a b", "\r\n ", "é", "b1", "==_x_==", "--", ",", "?"])


@fuzz(1500)
@given(pieces=st.lists(TYPE_PIECES, max_size=14))
def test_a_plain_content_type_reads_as_the_policy_reads_it(pieces):
    value = "".join(pieces)
    msg = EmailMessage(policy=ReadResult(file="")._policy)
    msg.set_raw("Content-Type", value)
    found = shell.plain_content_type(msg)
    if found is not None:
        assert found == policy_type(value), value


def test_plain_content_types_of_pgp_mime_shells_are_read_without_the_policy():
    """The shapes senders write (GnuPG-based clients, Thunderbird, securemail, the SOP tools'
    wrappers): read by plain_content_type, as the policy reads them; others left to it."""
    plain = ['multipart/encrypted; protocol="application/pgp-encrypted"; boundary="------------x5Yq0"',
             'multipart/encrypted;\r\n protocol="application/pgp-encrypted";\r\n boundary="=-=-="',
             "multipart/encrypted; boundary=b1; protocol=\"application/pgp-encrypted\"",
             'Multipart/Encrypted;boundary="a;b c";', 'multipart/encrypted; boundary=""', "text/plain"]
    for value in plain:
        msg = EmailMessage(policy=ReadResult(file="")._policy)
        msg.set_raw("Content-Type", value)
        assert shell.plain_content_type(msg) == policy_type(value) is not None, value
    for value in ['multipart/encrypted; boundary=a; boundary=b', "multipart/encrypted; boundary=a'b",
                  'multipart/encrypted; boundary="=?utf-8?q?x?="', 'multipart/encrypted; boundary*=x',
                  'multipart/encrypted; boundary="a\\"b"', "multipart/encrypted (c); boundary=x"]:
        msg = EmailMessage(policy=ReadResult(file="")._policy)
        msg.set_raw("Content-Type", value)
        assert shell.plain_content_type(msg) is None, value


def test_seeded_content_types_are_read_plainly_often_and_always_as_the_policy():
    rng = random.Random(11)
    heads = ["multipart/encrypted", "Multipart/Encrypted", "text/plain", "a/b/c", "x"]
    params = ["; boundary=b1", '; boundary="a;b c"', "; protocol=\"application/pgp-encrypted\"", "; BOUNDARY=x",
              "; boundary=a'b", '; boundary="=?utf-8?q?x?="', "; boundary*=x", ";", " ", "\r\n ", '; boundary=""',
              '; boundary="sp  "', "; charset=utf-8", "; b=é"]
    read = 0
    for _ in range(4000):
        value = rng.choice(heads) + "".join(rng.choices(params, k=rng.randrange(4)))
        msg = EmailMessage(policy=ReadResult(file="")._policy)
        msg.set_raw("Content-Type", value)
        found = shell.plain_content_type(msg)
        if found is not None:
            read += 1
            assert found == policy_type(value), value
    assert read > 1000, read
