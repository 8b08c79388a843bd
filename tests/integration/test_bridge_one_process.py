"""The bridge in one process (``[readers] count = 0`` in bridge.toml): the setting docs/bridge.md
gives a person short of memory (181 MB peak with a 25 MiB attachment, against 316 MB with two
readers). It must show a client exactly what the bridge with reader processes shows.

A real Dovecot holds alice's INBOX: small and big (1 MiB attachment, read over its own memory by
a reader; from bytes by the one-process bridge's thread) PGP/MIME messages as `securemail send`
makes them, and a modified one. mbsync syncs it through each bridge; the two Maildirs hold the
same messages, byte for byte.
"""

from __future__ import annotations

import email
import os
import re
import smtplib
from email import policy
from pathlib import Path

import pytest

from bench.bridge import ALICE, SENDER, make_homes
from tests.support import Dovecot, require_dovecot
from tests.support.bridge import BridgeServe, Mbsync, bridge_home, require_mbsync

pytestmark = pytest.mark.timeout(300)

NOTICE = "[securemail] message not shown"


def made(sender: Path, subject: str, body: str, attachment: bytes | None = None) -> bytes:
    """A PGP/MIME message as `securemail send` makes it, signed by bruno, encrypted to alice."""
    from securemail.app import open_home
    from securemail.mail.compose import Draft
    from securemail.mail.outgoing import build_encrypted
    core = open_home(sender)
    try:
        draft = Draft(sender=SENDER, to=[ALICE], subject=subject, body=body,
                      attachments=[("data.bin", attachment)] if attachment else [])
        return build_encrypted(core.keys, draft, None)[0]
    finally:
        core.close()


def tampered(raw: bytes) -> bytes:
    """One base64 character of the encrypted data changed, 100 bytes before the armor's end (the
    packets before it may be for other recipients), and the armor's checksum line taken out
    (optional, RFC 9580): the decryption's own checks (the MDC) must refuse it."""
    raw = re.sub(rb"\r?\n=[A-Za-z0-9+/]{4}(?=\r?\n-----END PGP MESSAGE-----)", b"", raw)
    pos = raw.index(b"-----END PGP MESSAGE-----") - 100
    while raw[pos:pos + 1] in (b"\r", b"\n", b"="):
        pos -= 1
    return raw[:pos] + (b"B" if raw[pos:pos + 1] != b"B" else b"C") + raw[pos + 1:]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_dovecot()
    require_mbsync()
    tmp = tmp_path_factory.mktemp("oneproc")
    os.chmod(tmp, 0o755)
    sender, _ = make_homes(tmp)   # bruno's home (alice's key in it); alice.asc, sender.asc in tmp
    dovecot = Dovecot(tmp / "dv", [ALICE], fsync=False).start()
    try:
        big = os.urandom(1 << 20)
        raws = [made(sender, f"petit {i}", f"Note {i}.\n") for i in range(5)]
        raws.append(made(sender, "gros", "Piece jointe.\n", big))
        raws.append(tampered(made(sender, "modifie", "Ne doit pas paraitre.\n")))
        with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
            for raw in raws:
                lmtp.sendmail(SENDER, [ALICE], raw)
        yield tmp, dovecot, [tmp / "alice.asc", tmp / "sender.asc"], big
    finally:
        dovecot.stop()


def synced(tmp: Path, dovecot: Dovecot, keys: list[Path], readers: int) -> tuple[list[bytes], list[int]]:
    """The messages mbsync gets through a bridge with ``readers`` reader processes, and the pids
    of the bridge's children while it served."""
    base = tmp / f"readers-{readers}"
    base.mkdir()
    home, creds = bridge_home(base, dovecot, ALICE, keys, readers=readers)
    bridge = BridgeServe(home, creds).start()
    try:
        sync = Mbsync(base / "client", "127.0.0.1", bridge.port, creds["username"], creds["password"],
                      creds["certificate"], fsync=False)
        sync.run()
        pid = bridge.proc.pid
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    finally:
        assert bridge.stop() == 0, bridge.output()
    # mbsync writes an X-TUID line of its own (random) into each message's header
    return sorted(re.sub(rb"(?m)^X-TUID: \S+\r?\n", b"", f.read_bytes(), count=1) for f in sync.files()), children


def test_one_process_bridge_shows_what_the_readers_show(world):
    tmp, dovecot, keys, big = world
    alone, children = synced(tmp, dovecot, keys, 0)
    assert children == []   # no reader process: the reading is a thread of the bridge
    with_readers, reader_pids = synced(tmp, dovecot, keys, 2)
    assert len(reader_pids) == 2
    assert alone == with_readers   # the same messages, byte for byte
    shown = [email.message_from_bytes(raw, policy=policy.default) for raw in alone]
    subjects = sorted(str(m["Subject"]) for m in shown)
    notices = [s for s in subjects if s.startswith(NOTICE)]
    assert len(notices) == 1 and "the message was modified" in notices[0], notices
    assert [s for s in subjects if s not in notices] == ["gros"] + [f"petit {i}" for i in range(5)]
    for m in shown:
        status = str(m["Securemail-Status"])
        if str(m["Subject"]).startswith(NOTICE):
            assert "refused=yes" in status and b"Ne doit pas paraitre" not in m.as_bytes()
        else:
            assert "encrypted=yes" in status and "signature=valid" in status, status
    attached = next(m for m in shown if str(m["Subject"]) == "gros")
    assert next(p for p in attached.walk() if p.get_filename() == "data.bin").get_content() == big
