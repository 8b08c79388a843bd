"""Differential fuzzing of ``view.crlf_head``: the bridge converts only the header block of a
message it shows (and the empty line after it) to CRLF, not a big body. ``parse_header_block``
must read the same block from it as from the whole message converted (``crlf(raw)``, the old
way, kept as the oracle): the same fields, size and body start, or the same refusal; and the
body found at that start in the whole converted message is the same."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from securemail.bridge.view import crlf, crlf_head
from securemail.errors import SecureMailError
from securemail.mail.headers import HEADER_BYTES, parse_header_block

from . import fuzz

_PIECES = [b"Subject: hi", b"From: a@b.fr", b" folded", b"\t", b"X-Long: " + b"v" * 700, b"bad line",
           b":", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n\n", b"\r\r\n", b"body",
           b"-----BEGIN PGP MESSAGE-----", b"=", b" ", b""]


def read(data: bytes):
    try:
        block = parse_header_block(data)
    except SecureMailError as e:
        return ("refused", e.smtp_reply() if hasattr(e, "smtp_reply") else e.message)
    return (block.fields, block.size, block.body_start)


@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.lists(st.sampled_from(_PIECES), max_size=40))
@fuzz(3000)
def test_the_header_block_read_from_the_converted_head_is_the_one_read_from_the_whole(head, body):
    raw = b"".join(head) + b"".join(body)
    whole, part = crlf(raw), crlf_head(raw)
    assert read(part) == read(whole)
    assert whole.startswith(part)   # a prefix: the body start found in it holds in the whole


@given(st.integers(HEADER_BYTES - 40, HEADER_BYTES + 40), st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\n", b""]))
@fuzz(300)
def test_a_header_block_near_the_size_limit_is_read_or_refused_as_before(size, end):
    raw = b"X-Big: " + b"a" * size + end + b"body\n" * 10
    assert read(crlf_head(raw)) == read(crlf(raw))
