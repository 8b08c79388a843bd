"""Differential fuzzing of ``shell.part_head``: the Content-Type and Content-Transfer-Encoding of
a PGP/MIME part read straight from its header fields, against the email parser's compat32
reading that it replaced for ASCII header blocks (commit 211f1b1's ``_part_head``, kept here as
the oracle). Blocks of any fields, folds, cases, duplicates, parameters, stray slashes and
semicolons, blanks and bytes beyond ASCII: both give the same answer, or both none."""

from __future__ import annotations

import random
from email import policy

from hypothesis import given
from hypothesis import strategies as st

from securemail.mail import shell
from securemail.mail.headers import HEADER_BYTES

from . import fuzz


def oracle(raw: bytes, part: tuple[int, int]):
    start, end = part
    found = shell.head_only(raw[start:min(end, start + HEADER_BYTES + 4)], policy.compat32)
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
