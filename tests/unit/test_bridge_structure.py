"""bridge/structure.py finds the structure pymap's own parse finds: the loader's shapes, every
corpus message as it came and as the bridge shows it, and thousands of bent messages."""

from __future__ import annotations

import random
import secrets

import pytest
from pymap.mime import MessageContent

from securemail.bridge.structure import Span, structure
from securemail.bridge.view import Viewer
from tests.support.reader import corpus_reader
from tests.unit.test_bridge_loader import SHAPES


def pymaps(data: bytes) -> dict:
    """pymap's parse of ``data`` (its json), each body's lines as a Span."""
    def spans(found: dict) -> dict:
        body = found["body"]
        return {"header": found["header"],
                "body": {"lines": Span(body["lines"]), "content_type": body["content_type"],
                         "nested": [spans(part) for part in body["nested"]]}}
    return spans(MessageContent.parse(data).json)


def nested_count(found: dict) -> int:
    return 1 + sum(nested_count(p) for p in found["body"]["nested"])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_loaders_shapes(shape):
    assert structure(SHAPES[shape]) == pymaps(SHAPES[shape])


def test_every_corpus_message_as_it_came_and_as_shown(corpus, tmp_path):
    multipart = 0
    with corpus_reader(corpus, tmp_path) as (core, keys):
        viewer = Viewer(keys, core.keys.lookup)
        for m in corpus["mail"]:
            raw = (corpus["dir"] / m["file"]).read_bytes()
            for data in (raw, viewer.show(raw)):
                found = structure(data)
                assert found == pymaps(data), m["file"]
                multipart += nested_count(found) > 1
    assert multipart >= 10   # the comparison reached parts, not only flat bodies


PIECES = [b"From: a@x.fr", b"Subject: s", b" folded", b"\tfolded", b"", b" ", b"\t \x0b", b"text",
          b"--b", b"--b--", b"--b ", b" --b", b"x--b", b"--bb", b"--b--x", b"--b\r", b"--c", b"--c--",
          b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/alternative; boundary=\"c\"",
          b"Content-Type: message/rfc822", b"Content-Type: text/plain", b"Content-Type: multipart/mixed",
          b"Content-Type: multipart/mixed; boundary=\"\xc3\xa9\"", b"QUJD" * 19, b"no colon here"]


def bent(rng: random.Random) -> bytes:
    lines = [rng.choice(PIECES[18:24])] + [rng.choice(PIECES) for _ in range(rng.randrange(0, 40))]
    ends = [b"\r\n"] * 6 + [b"\n", b"\r", b""]
    out = b"".join(line + rng.choice(ends) for line in lines)
    return out if rng.random() < 0.7 else out.rstrip(b"\r\n")


def test_bent_messages():
    rng, parts = random.Random(13), 0
    for _ in range(3000):
        data = bent(rng)
        found = structure(data)
        assert found == pymaps(data), data
        parts += nested_count(found) > 1
    assert parts >= 400   # the seed above gives 424 with parts


def test_a_big_body_costs_no_tuple_per_line():
    body = b"QUJD" * 19 + b"\r\n"
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            + body * 50_000 + b"--b--\r\n")
    found = structure(data)
    assert found == pymaps(data)
    lines = found["body"]["nested"][0]["body"]["lines"]
    assert isinstance(lines, Span) and len(lines) == 50_000   # one Span for them, not 50,000 tuples


def test_equal_content_types_share_one_parse_and_long_ones_are_not_kept():
    from securemail.mail import mimeparse as M
    tag = secrets.token_hex(8)
    one = f"Content-Type: text/plain; charset=utf-8; x-tag={tag}\r\n\r\nhello\r\n".encode()
    other = f"Subject: other\r\nContent-Type: text/plain; charset=utf-8; x-tag={tag}\r\n\r\nbye\r\n".encode()
    before = M._shared.cache_info()
    assert structure(one) == pymaps(one) and structure(other) == pymaps(other)
    after = M._shared.cache_info()
    assert (after.misses, after.hits) == (before.misses + 1, before.hits + 1)
    long = ("Content-Type: text/plain; x-pad=" + "a" * M.SHARED_LONGEST + "\r\n\r\nbody\r\n").encode()
    assert structure(long) == pymaps(long)
    assert M._shared.cache_info().currsize == after.currsize   # parsed, not kept
