"""Differential fuzzing of ``mimeparse.count_parts``: it finds the word "boundary" in lowered
pieces and tries the declaration pattern only there; before, three case-blind scans of the whole
message (commit 211f1b1's count_parts, kept here as the oracle). Both answer the same count, or
both refuse, for messages made of declarations, delimiter lines and noise in any case, with
pieces as small as the word itself so that every split of it is met."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.errors import LimitExceeded
from securemail.mail import mimeparse as M

from . import fuzz

_BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]+)', re.I)


def oracle(raw: bytes) -> int:
    def delimiters() -> int:
        bounds = {b.strip() for b in _BOUNDARY.findall(raw)} - {b""}
        if not bounds:
            return 0
        return len(re.findall(rb"\n--(?:" + b"|".join(re.escape(b) for b in sorted(bounds)) + rb")", raw))
    if len(re.findall(rb"boundary", raw, re.I)) > M.MAX_MIME_PARTS or delimiters() > 2 * M.MAX_MIME_PARTS:
        raise LimitExceeded("too many MIME parts")
    return len({b.strip() for b in _BOUNDARY.findall(raw)})


def answer(count, raw: bytes, **kw):
    try:
        return count(raw, **kw)
    except LimitExceeded:
        return "refused"


TOKENS = st.sampled_from([b"boundary", b"BOUNDARY", b"BoUnDaRy", b"bounDAR", b"y", b"=", b" = ", b'="',
                          b'"', b";", b"\r\n", b"\n", b"--", b"a", b"ab", b"boundary=a", b"boundary=\"ab\"",
                          b"\n--a", b"\n--ab", b"\n--a--", b"Content-Type: multipart/mixed; ", b"\t", b" "])


@fuzz(600)
@given(tokens=st.lists(TOKENS, max_size=80), piece=st.integers(min_value=8, max_value=40))
def test_in_pieces_answers_as_the_whole_scans(tokens, piece):
    raw = b"".join(tokens)
    assert answer(M.count_parts, raw, piece=piece) == answer(oracle, raw)


@pytest.mark.parametrize("piece", [8, 9, 1 << 20])
def test_over_the_limits_both_refuse(piece):
    many_words = b"boundary " * (M.MAX_MIME_PARTS + 1)
    many_lines = b'Content-Type: multipart/mixed; boundary="z"\r\n' + b"\n--z\r\n" * (2 * M.MAX_MIME_PARTS + 1)
    at_limit = b"BOUNDARY " * M.MAX_MIME_PARTS
    for raw, expected in ((many_words, "refused"), (many_lines, "refused"), (at_limit, 0)):
        assert answer(M.count_parts, raw, piece=piece) == answer(oracle, raw) == expected
