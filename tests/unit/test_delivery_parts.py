"""Delivery stage pieces without sockets: next-hop strings, outcomes, DSNs, Maildir writing."""

from __future__ import annotations

import email
import os
import stat
from email.policy import default as default_policy

import pytest

from securemail.delivery.dsn import build_dsn, header_block
from securemail.delivery.maildir import deliver_maildir
from securemail.transform.hops import maildir_hop, parse_hop, relay_hop, smtp_hop
from securemail.transform.hops import MaildirHop, RelayHop, SmtpHop
from securemail.delivery.maildir import mailbox_name
from securemail.delivery.outcome import clean, from_reply
from securemail.errors import UsageError

PIN = "ab" * 32
HEADERS = b"From: a@a.gov.test\r\nSubject: plans\r\nMessage-ID: <x1@a.gov.test>\r\n"
MESSAGE = HEADERS + b"\r\nTOP-SECRET BODY\r\n"


# --- next hops -----------------------------------------------------------------------------
def test_hops_round_trip():
    assert parse_hop(str(smtp_hop("gw.b.gov.test", 25, PIN.upper()))) == SmtpHop("gw.b.gov.test", 25, PIN)
    assert parse_hop(str(smtp_hop("2001:db8::1", 2525, PIN))) == SmtpHop("2001:db8::1", 2525, PIN)
    assert str(smtp_hop("2001:db8::1", 2525, PIN)) == f"smtp:[2001:db8::1]:2525:{PIN}"
    assert parse_hop(str(relay_hop("mx.office", 25))) == RelayHop("mx.office", 25)
    assert parse_hop(str(maildir_hop("Bob@A.gov.test"))) == MaildirHop("Bob@A.gov.test")


@pytest.mark.parametrize("text", [
    "smtp:gw:25", "smtp:gw:25:" + "ab" * 31, "smtp:gw:25:" + "zz" * 32, "smtp:gw:0:" + PIN,
    "smtp:gw:99999:" + PIN, "smtp:2001:db8::1:25:" + PIN, "relay:mx", "relay::25",
    "relay:mx:port", "maildir:", "maildir:a b@x", "maildir:a\n@x", "pop3:x:1", "nohop", "",
    "relay:bad host:25",
])
def test_bad_hops_refused(text):
    with pytest.raises(UsageError):
        parse_hop(text)


# --- outcomes --------------------------------------------------------------------------------
def test_reply_classes_and_cleaning():
    assert from_reply(250, "2.0.0 ok").kind == "delivered"
    assert from_reply(451, "4.3.0 later").kind == "temporary"
    assert from_reply(550, "5.1.1 no\r\nsuch\x00user").message == "5.1.1 no such user"
    assert from_reply(550, "5.1.1 no such user").status == "5.1.1"
    assert from_reply(550, "no enhanced code").status is None
    assert len(clean("x" * 1000)) == 200


# --- DSN ---------------------------------------------------------------------------------------
def test_dsn_structure():
    raw = build_dsn(MESSAGE, "a@a.gov.test", "b@b.gov.test", "no such user", "gw.a.gov.test",
                    1_700_000_000, 1_700_000_100, "5.1.1", remote_reply=(550, "5.1.1 no such user"))
    msg = email.message_from_bytes(raw, policy=default_policy)
    assert msg["To"].addresses[0].addr_spec == "a@a.gov.test" and msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    human, report, headers = msg.get_payload()
    assert "b@b.gov.test" in human.get_content() and "no such user" in human.get_content()
    fields = report.get_payload()  # message/delivery-status: one block per field group
    assert fields[0]["Reporting-MTA"] == "dns; gw.a.gov.test"
    assert fields[1]["Final-Recipient"] == "rfc822; b@b.gov.test"
    assert (fields[1]["Action"], fields[1]["Status"]) == ("failed", "5.1.1")
    assert fields[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"TOP-SECRET" not in raw and b"Subject: plans" in raw
    assert all(line.endswith(b"\r") or line == b"" for line in raw.split(b"\n"))  # CRLF only


def test_dsn_without_remote_reply_has_no_diagnostic_code():
    raw = build_dsn(HEADERS, "a@a.gov.test", ["b@b.gov.test", "c@b.gov.test"], "recipient key revoked",
                    "gw.a.gov.test", 0, 10, "5.7.0")
    assert b"Diagnostic-Code" not in raw and raw.count(b"Final-Recipient:") == 2


def test_no_dsn_for_null_sender():
    assert build_dsn(HEADERS, "", "b@b.gov.test", "x", "gw", 0, 0) is None


def test_dsn_refuses_bad_status_and_cleans_injection():
    with pytest.raises(UsageError):
        build_dsn(HEADERS, "a@x", "b@y", "r", "gw", 0, 0, status="9.9.9")
    raw = build_dsn(HEADERS, "a@x\r\nBcc: evil@z", "b@y", "r", "gw", 0, 0)
    assert b"\r\nBcc:" not in raw


def test_header_block_stops_at_body_or_non_header_line():
    assert header_block(MESSAGE) == HEADERS
    assert header_block(b"Subject: x\nX-A: 1\n  folded\nbody text without blank line\n") == \
        b"Subject: x\r\nX-A: 1\r\n  folded\r\n"
    assert header_block(b"not a header\r\n\r\nbody") == b""
    big = b"X-Big: " + b"a" * 70_000 + b"\r\n\r\nbody"
    assert header_block(big) == b""  # an over-long header is cut whole, never half


# --- Maildir -------------------------------------------------------------------------------------
@pytest.mark.parametrize("address,name", [
    ("Bob@A.gov.test", "bob@a.gov.test"), ("../etc@x", None), ("a/b@x", None), ("a\\b@x", None),
    (".hidden@x", None), ("a..b@x", None), ("", None), ("a\x00b@x", None),
])
def test_mailbox_names(address, name):
    assert mailbox_name(address) == name


def test_maildir_writes_new_file_private(tmp_path):
    root = tmp_path / "Maildir"
    out = deliver_maildir(root, "Bob@A.gov.test", MESSAGE, clock=lambda: 1234.5, hostname="gw/x:y")
    assert out.kind == "delivered"
    [f] = (root / "bob@a.gov.test" / "new").iterdir()
    assert f.name.startswith("1234.M500000P") and f.name.endswith(".gw\\057x\\072y")
    assert f.read_bytes() == MESSAGE and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "bob@a.gov.test").stat().st_mode) == 0o700
    assert deliver_maildir(root, "bob@a.gov.test", b"2").kind == "delivered"
    assert len(list((root / "bob@a.gov.test" / "new").iterdir())) == 2


def test_maildir_refuses_traversal_and_symlinked_box(tmp_path):
    root = tmp_path / "Maildir"
    out = deliver_maildir(root, "../../etc@x", b"x")
    assert (out.kind, out.message) == ("permanent", "invalid local mailbox name")
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "eve@x")
    out = deliver_maildir(root, "eve@x", b"x")
    assert out.kind == "temporary" and str(tmp_path) not in out.message
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_maildir_disk_failure_is_temporary_and_says_no_path(tmp_path):
    root = tmp_path / "Maildir"
    (root / "bob@x").mkdir(parents=True, mode=0o700)
    (root / "bob@x" / "tmp").write_text("a file where a directory should be")
    out = deliver_maildir(root, "bob@x", b"x")
    assert out.kind == "temporary" and "/" not in out.message


def test_maildir_names_sort_in_delivery_order():
    """Readers (and the tests) list a Maildir by name: within one second, 0.05 s comes before 0.5 s."""
    from securemail.delivery.maildir import _unique
    times = [1_700_000_000.05, 1_700_000_000.5, 1_700_000_000.999999, 1_700_000_001.000001]
    names = [_unique(t, "gw.example") for t in times]
    assert sorted(names) == names
