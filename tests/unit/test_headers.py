"""The one parse of the header block (mail/headers.py): whole, within hard limits, or refused.

Finding 10 of issue 10: policy cut the header block at 256 KiB and saw one From
where the next hop saw two. Here a block is either read whole, exactly as
Python's email parser (what a next hop runs) reads it, or refused with a named
reply; it is never cut short.
"""

from __future__ import annotations

import pickle
import time
from email import policy as email_policy
from email.parser import BytesHeaderParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.envelope import Envelope
from securemail.mail.headers import (HEADER_BYTES, HEADER_FIELDS, HeaderBlockError, parse_header_block)
from securemail.policy import rules
from securemail.policy.encryption import EncryptionCheck
from securemail.policy.facts import Headers, gather
from securemail.smtp import replies
from tests.fuzz import fuzz

MSG = (b"From: Bruno <bruno@justice.gouv.fr>\r\nTo: <alice@interieur.gouv.fr>\r\n"
       b"Subject: a folded\r\n\tsubject\r\nMessage-ID: <m@justice.gouv.fr>\r\n\r\nBody.\r\n")


def refused(raw: bytes, reply: str, **limits) -> HeaderBlockError:
    with pytest.raises(HeaderBlockError) as e:
        parse_header_block(raw, **limits)
    assert e.value.smtp_reply() == reply
    return e.value


# --- what a block is -------------------------------------------------------------------------
def test_fields_in_order_with_raw_bytes_and_lower_case_names():
    b = parse_header_block(MSG)
    assert [f.name for f in b.fields] == ["from", "to", "subject", "message-id"]
    assert b.fields[2].raw == b"Subject: a folded\r\n\tsubject"
    assert b.fields[2].value == b" a folded\r\n\tsubject"
    assert b.fields[2].text() == "a folded\tsubject"
    assert b.head() == MSG[:MSG.index(b"\r\n\r\n") + 2] and b.size == len(b.head())
    assert bytes(b.body(MSG)) == b"Body.\r\n" and b.body_start == MSG.index(b"Body.")
    assert b.texts("FROM") == ("Bruno <bruno@justice.gouv.fr>",) and b.count("to") == 1
    assert b.first("message-id").raw == b"Message-ID: <m@justice.gouv.fr>" and b.first("cc") is None
    assert b.head(without=("Subject", "to")) == (b"From: Bruno <bruno@justice.gouv.fr>\r\n"
                                                 b"Message-ID: <m@justice.gouv.fr>\r\n")


def test_no_empty_line_means_all_header_block():
    raw = MSG[:MSG.index(b"\r\n\r\n") + 2]
    b = parse_header_block(raw)
    assert len(b.fields) == 4 and b.body_start == len(raw) and bytes(b.body(raw)) == b""


def test_empty_header_block():
    b = parse_header_block(b"\r\nonly a body\r\n")
    assert b.fields == () and b.size == 0 and b.body_start == 2


def test_facts_carry_the_block_and_policy_reads_it():
    env = Envelope("bruno@justice.gouv.fr", ("alice@interieur.gouv.fr",), MSG, "127.0.0.1", 25, True, None,
                   None, "x", 0.0)
    f = gather(env, listener="relay", trusted=False, own_domains=("interieur.gouv.fr",),
               members=frozenset({"justice.gouv.fr"}), encryption=EncryptionCheck(False, "none", ""))
    assert f.block == parse_header_block(MSG) and f.headers == Headers.of(f.block)
    assert f.from_domain == "justice.gouv.fr"


# --- finding 10: a second From after 256 KiB ----------------------------------------------------
def second_from_after(n: int) -> bytes:
    filler = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"v" * 60) for i in range(n // 80 + 1))
    return (b"From: <bruno@justice.gouv.fr>\r\n" + filler + b"From: <minister@justice.gouv.fr>\r\n"
            b"To: <alice@interieur.gouv.fr>\r\n\r\nbody\r\n")


def test_second_from_after_256_kib_is_refused_not_cut():
    raw = second_from_after(256 << 10)
    refused(raw, replies.HEADERS_TOO_BIG)
    # with limits big enough to read it whole, both Froms are seen: policy refuses them too
    b = parse_header_block(raw, max_bytes=1 << 20, max_fields=10000)
    assert b.count("from") == 2 and len(BytesHeaderParser().parsebytes(raw).get_all("From")) == 2
    assert rules.one_from(gather(Envelope("bruno@justice.gouv.fr", ("alice@interieur.gouv.fr",), raw, "127.0.0.1",
                                          25, True, None, None, "x", 0.0),
                                 listener="relay", trusted=False, own_domains=("interieur.gouv.fr",),
                                 members=frozenset({"justice.gouv.fr"}),
                                 encryption=EncryptionCheck(False, "none", ""), block=b)) is not None


def test_size_limit_is_exact():
    head = b"X-A: " + b"a" * 90 + b"\r\n"
    raw = head * 10 + b"\r\nbody"
    assert len(parse_header_block(raw, max_bytes=len(head) * 10).fields) == 10
    refused(raw, replies.HEADERS_TOO_BIG, max_bytes=len(head) * 10 - 1)
    refused(head * 10, replies.HEADERS_TOO_BIG, max_bytes=len(head) * 10 - 1)  # no empty line


def test_field_limit_is_exact():
    raw = b"From: <a@b.fr>\r\n" + b"X-N: 1\r\n" * (HEADER_FIELDS - 1) + b"\r\n"
    assert len(parse_header_block(raw).fields) == HEADER_FIELDS
    refused(b"X-N: 1\r\n" + raw, replies.TOO_MANY_HEADERS)


def test_a_huge_message_without_an_empty_line_is_refused_cheaply():
    raw = b"X-A: " + b"a" * 990 + b"\r\n"
    raw = raw * (25 << 10)  # 25 MB, all header
    start = time.process_time()
    refused(raw, replies.HEADERS_TOO_BIG)
    assert time.process_time() - start < 0.05


# --- what every parser would not read alike is refused --------------------------------------------
@pytest.mark.parametrize("head", [
    b"From: a@b.fr\r\nnot a field\r\n",
    b"From : a@b.fr\r\n",                          # space before the colon (obsolete syntax)
    b": no name\r\n",
    b" continuation first\r\nFrom: a@b.fr\r\n",
    b"From: a@b.fr\r\n \t\r\nFrom: c@d.fr\r\n",    # a whitespace-only line: an end of header for some
    b"From: a@b.fr\nTo: c@d.fr\r\n",                # bare LF
    b"From: a@b.fr\rTo: c@d.fr\r\n",                # bare CR
    b"X-\xc3\xa9: 8-bit name\r\n",
    b"From alice@b.fr Mon Jan  1 10:00:00 2024\r\nFrom: a@b.fr\r\n",  # mbox From line
])
def test_ambiguous_header_blocks_are_refused(head):
    refused(head + b"\r\nbody\r\n", replies.MALFORMED_HEADERS)


def test_replies_and_pickling():
    e = refused(b"X-N: 1\r\n" * 3 + b"\r\n", replies.TOO_MANY_HEADERS, max_fields=2)
    back = pickle.loads(pickle.dumps(e))  # crosses from a crypto worker to the SMTP process
    assert back.smtp_reply() == replies.TOO_MANY_HEADERS and not back.temporary
    for reply in (replies.HEADERS_TOO_BIG, replies.TOO_MANY_HEADERS, replies.MALFORMED_HEADERS):
        assert replies.checked(reply) == reply and reply[0] == "5"
    assert HEADER_BYTES == 64 << 10


# --- differential: what we accept, Python's email parser reads the same way ----------------------
_NAME = st.sampled_from([b"From", b"FROM", b"To", b"Subject", b"Received", b"X-A", b"DKIM-Signature", b"Cc"])
_VALUE = st.binary(max_size=30).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
_LINE = st.one_of(st.builds(lambda n, v: n + b":" + v, _NAME, _VALUE),
                  st.builds(lambda w, v: w + v, st.sampled_from([b" ", b"\t", b"  "]), _VALUE),
                  st.sampled_from([b"", b"no colon", b"From :x", b" ", b"From x", b"a\nb", b"a\rb"]))


@fuzz(300)
@given(st.lists(_LINE, max_size=8), st.sampled_from([b"\r\n\r\nbody\r\n", b"\r\n", b""]))
def test_accepted_blocks_read_alike_by_the_email_package(lines, end):
    raw = b"\r\n".join(lines) + end
    try:
        b = parse_header_block(raw)
    except HeaderBlockError:
        return
    theirs = BytesHeaderParser(policy=email_policy.compat32).parsebytes(raw)
    assert [f.name for f in b.fields] == [k.lower() for k in theirs.keys()]
    assert b.count("from") == len(theirs.get_all("From") or [])
