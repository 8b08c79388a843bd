"""The CPU budget of what runs before 250 (issue 10, finding 4), held whatever the message's shape.

For a message of 256 KiB, the path the crypto stage takes before it can refuse
or accept (the one header-block parse, the encryption check, the facts and the
rules that need no DKIM, then DKIM verification on that parse) costs less than
BUDGET of CPU (time.process_time). DKIM is always run here, with the From
domain's key really found, as if every other rule had let the message through:
the worst case. Shapes are the adversarial ones of the issue: 16,000 names in
h=, thousands of header fields, many DKIM-Signature fields (with a body hash
that matches, so dkimpy hashes the headers), long folded fields, many From.

Before this work the h= shape alone took 10.4 s (16,000 names, 9,000 fields,
256 KiB: dkimpy's h= matching is quadratic); the issue measured 21 s.
"""

from __future__ import annotations

import base64
import functools
import gc
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from securemail.crypto.dkim import generate_dkim_key, manifest_dnsfunc, verify_dkim
from securemail.crypto.dkim_signing import relaxed_body_hash
from securemail.envelope import Envelope
from securemail.transform.stage import BEFORE_DKIM
from securemail.mail.headers import HeaderBlockError, parse_header_block
from securemail.policy import encryption, rules
from securemail.policy.facts import gather

from . import fuzz

BUDGET = 0.050          # seconds of CPU per message
SIZE = 256 << 10        # bytes per message
JUSTICE = "justice.gouv.fr"


@functools.cache
def dns():
    return manifest_dnsfunc({f"sm._domainkey.{JUSTICE}": generate_dkim_key("ed25519").public_txt})


def pre_250(raw: bytes) -> None:
    """What the crypto stage runs on a message before its reply, DKIM included whatever the rules say."""
    try:
        block = parse_header_block(raw)
    except HeaderBlockError:
        return
    env = Envelope(f"bruno@{JUSTICE}", ("alice@interieur.gouv.fr",), raw, "127.0.0.2", 25, True, None, None,
                   "x", 0.0)
    facts = gather(env, listener="relay", trusted=False, own_domains=("interieur.gouv.fr",),
                   members=frozenset({JUSTICE}), encryption=encryption.check(raw), block=block)
    rules.evaluate(facts, BEFORE_DKIM)
    verify_dkim(raw, dns(), block=block, domains=(JUSTICE,))


def cpu(raw: bytes) -> float:
    """CPU seconds of pre_250(raw), the best of three runs, stopping at the first within budget (a
    page fault, a GC pause or another test process on the same core is not the input's)."""
    best = float("inf")
    gc.collect()      # a test process that ran gateways before holds a large heap: its collection
    gc.disable()      # is not this message's cost
    try:
        for _ in range(3):
            start = time.process_time()
            pre_250(raw)
            best = min(best, time.process_time() - start)
            if best < BUDGET:
                break
    finally:
        gc.enable()
    return best


# --- messages of 256 KiB ------------------------------------------------------------------------
def short_name(i: int) -> bytes:
    """A distinct field name of one to three characters for each i below 46,656."""
    digits, out = b"0123456789abcdefghijklmnopqrstuvwxyz", b""
    while True:
        out, i = digits[i % 36:i % 36 + 1] + out, i // 36
        if not i:
            return out


def signature(names: int, body_hash: bytes, short: bool = False) -> bytes:
    h = b":".join([b"from"] + [(short_name(i) if short else b"x-h%05d" % i) for i in range(names - 1)])
    return (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=" + JUSTICE.encode() + b"; s=sm;\r\n"
            b" h=" + h + b";\r\n bh=" + base64.b64encode(body_hash) + b"; b=" + base64.b64encode(b"s" * 64) + b"\r\n")


def message(*, names: int = 0, signatures: int = 0, fields: int = 0, folded: int = 0, froms: int = 1,
            tabs: bool = False, short: bool = False) -> bytes:
    """A message of SIZE bytes: the header fields asked for, then a body filling the rest."""
    head = b"".join(b"X-F%05d: v\r\n" % i for i in range(fields))
    if folded:
        head += b"X-Long: start" + b"".join(b"\r\n\t" + b"w " * 30 for _ in range(folded)) + b"\r\n"
    head += b"".join(b"From: <bruno%d@justice.gouv.fr>\r\n" % i for i in range(froms))
    head += b"To: <alice@interieur.gouv.fr>\r\nSubject: ...\r\n"
    line = (b"a \t b\t\t c  " * 6 if tabs else b"x" * 70) + b"\r\n"
    sig_size = len(signature(names, bytes(32), short)) * signatures if signatures else 0
    room = max(SIZE - len(head) - sig_size - 2, 0)
    body = line * (room // len(line)) + b"y" * (room % len(line))
    sig = signature(names, relaxed_body_hash(body), short) * signatures if signatures else b""
    return sig + head + b"\r\n" + body


SHAPES = {
    "the issue: 16,000 names in h=, 9,000 fields": dict(names=16000, signatures=1, fields=9000),
    "1,200 names in h= (2 or 3 bytes each), 990 fields": dict(names=1200, signatures=1, fields=990, short=True),
    "12,000 names in h= within the header limit": dict(names=12000, signatures=1, short=True),
    "64 names in h=, 990 fields, 4 signatures": dict(names=64, signatures=4, fields=990, tabs=True),
    "200 DKIM-Signature fields": dict(names=20, signatures=200),
    "1,000 fields": dict(fields=996),
    "a field folded over 60 KiB": dict(folded=1000, names=10, signatures=2),
    "3,000 From fields": dict(froms=3000),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_issue_shapes_are_within_budget(shape):
    raw = message(**SHAPES[shape])
    assert len(raw) == SIZE
    assert cpu(raw) < BUDGET


@fuzz(40)
@given(names=st.one_of(st.integers(1, 70), st.integers(1, 16000)), signatures=st.integers(0, 40),
       fields=st.one_of(st.integers(0, 1000), st.integers(0, 9000)), folded=st.one_of(st.just(0), st.integers(0, 1100)),
       froms=st.one_of(st.integers(0, 3), st.integers(0, 3000)), tabs=st.booleans(), short=st.booleans())
@example(names=16000, signatures=1, fields=9000, folded=0, froms=1, tabs=False, short=False)
@example(names=64, signatures=4, fields=900, folded=0, froms=1, tabs=True, short=True)
def test_any_shape_is_within_budget(names, signatures, fields, folded, froms, tabs, short):
    raw = message(names=max(names, 1), signatures=signatures, fields=fields, folded=folded, froms=froms,
                  tabs=tabs, short=short)
    assert cpu(raw) < BUDGET, f"{len(raw)} bytes"
