"""The bridge when its upstream IMAP server refuses its login or cannot be reached (real Dovecot).

A person's bridge starts at login, maybe offline, maybe after the ministry changed their
password: ``bridge serve`` keeps serving, says why in its log (never the password), and each
client command gets a NO with the reason and tries the upstream again. A refused login once
crashed the bridge (an AttributeError in the upstream pool's error path, exit 1).
"""

from __future__ import annotations

import imaplib
import os
import time

import pytest

from bench.bridge import ALICE, fill, make_homes, messages
from tests.support import Dovecot, require_dovecot
from tests.support.bridge import BridgeServe, bridge_home

pytestmark = pytest.mark.timeout(180)
WRONG = "not-the-password-" + os.urandom(6).hex()


@pytest.fixture
def setup(tmp_path):
    require_dovecot()
    os.chmod(tmp_path, 0o755)
    sender, _ = make_homes(tmp_path)
    dovecot = Dovecot(tmp_path / "dv", [ALICE], fsync=False).start()
    home, creds = bridge_home(tmp_path, dovecot, ALICE, [tmp_path / "alice.asc", tmp_path / "sender.asc"])
    try:
        yield dovecot, home, creds, sender
    finally:
        dovecot.stop()


def select_refused(bridge: BridgeServe) -> str:
    """SELECT INBOX through the bridge: its NO's text (the bridge still answers NOOP after it)."""
    client = bridge.client()
    try:
        typ, data = client.select("INBOX")
        assert typ == "NO", (typ, data)
        assert client.noop()[0] == "OK"
    finally:
        client.logout()
    return b" ".join(data).decode()


def test_a_refused_upstream_login_is_said_and_the_bridge_keeps_serving(setup):
    dovecot, home, creds, _ = setup
    (home / "bridge" / "upstream-password").write_text(WRONG + "\n")
    bridge = BridgeServe(home, creds).start()
    try:
        said = select_refused(bridge)
        assert "the upstream IMAP server refused" in said and "AUTHENTICATIONFAILED" in said, said
        assert "b'" not in said   # the server's words, not a repr of its bytes
        assert bridge.proc.poll() is None
        log = bridge.output()
        assert "refused: [AUTHENTICATIONFAILED]" in log and "Traceback" not in log, log
        assert WRONG not in log and WRONG not in said
    finally:
        assert bridge.stop() == 0, bridge.output()


def test_an_upstream_down_at_start_is_used_once_it_is_back(setup):
    dovecot, home, creds, _ = setup
    dovecot.stop()
    bridge = BridgeServe(home, creds).start()
    try:
        said = select_refused(bridge)
        assert "the upstream IMAP server failed" in said, said
        assert "cannot be used now" in bridge.output()
        dovecot.start()
        deadline = time.monotonic() + 30
        while True:   # Dovecot listening again: the next command reaches it
            client = bridge.client()
            try:
                typ, data = client.select("INBOX")
            finally:
                client.logout()
            if typ == "OK":
                break
            assert time.monotonic() < deadline, bridge.output()
            time.sleep(0.2)
        assert typ == "OK" and data == [b"0"], (typ, data)
    finally:
        assert bridge.stop() == 0, bridge.output()


def test_an_upstream_lost_in_the_middle_of_a_fetch_ends_that_connection_cleanly(setup):
    """The upstream gone in the middle of a client's FETCH: the first messages of the answer come
    from memory and are written, the next must be fetched upstream and cannot (the messages are
    loaded as the answer is written, and no NO can follow its first bytes). That connection ends,
    with one line in the log and no traceback (the connection's task died with one); the bridge
    serves on, and once the upstream is back a client gets every message."""
    dovecot, home, creds, sender = setup
    assert fill(dovecot, messages(sender, 100, 4096, "lost")) == 100
    bridge = BridgeServe(home, creds).start()
    try:
        client = bridge.client()
        assert client.select("INBOX") == ("OK", [b"100"])
        assert client.uid("FETCH", "1:5", "(BODY.PEEK[])")[0] == "OK"   # 1 to 5, and some ahead, in memory
        dovecot.doveadm("kick", ALICE)   # the bridge's upstream connections cut...
        dovecot.stop()                   # ... and no new one taken
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert bridge.proc.poll() is None
        log = bridge.output()
        assert "a client's connection ended: the upstream IMAP server failed" in log and "Traceback" not in log, log
        dovecot.start()
        client = bridge.client()
        try:
            assert client.select("INBOX")[0] == "OK"
            typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        finally:
            client.logout()
        bodies = [part[1] for part in data if isinstance(part, tuple)]
        assert typ == "OK" and len(bodies) == 100
        assert all(b"Securemail-Status: encrypted=yes; signature=valid" in body for body in bodies)
    finally:
        assert bridge.stop() == 0, bridge.output()
