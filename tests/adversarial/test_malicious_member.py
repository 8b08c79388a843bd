"""Threat agent: a compromised or malicious member gateway (its own TLS certificate, DKIM keys and directory).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 8: no body at rest once delivered ---------------------------------------
def test_member_mail_leaves_no_body_in_the_queue_database_files(gw):
    """A member sends domain-key encrypted mail with a plaintext marker inside to alice (maildir
    mode). Once it is delivered, A's SQLite database, -wal and -shm hold neither the marker nor
    any line of the armored message A queued and delivered: the body is gone, not only its
    plaintext (the settle removes it, secure_delete zeroes it, the WAL is truncated)."""
    import re
    import uuid

    from securemail.crypto import message as M
    from securemail.crypto.keys import load_key
    from tests.hostile.test_message_hostile import from_member, pgp_mime
    from tests.integration.gateways import ok, run_cli, wait_for

    tag = uuid.uuid4().hex
    marker = f"HIDDEN-AT-REST-{tag}".encode()
    domain_key = load_key(ok(run_cli(gw.a.home, "keys", "export", f"gateway@{OWN}")).stdout_bytes)
    inner = (f"From: Bruno Petit <{BRUNO}>\r\nTo: <{ALICE}>\r\nSubject: Note\r\n"
             f"Content-Type: text/plain; charset=utf-8\r\n\r\nTexte {marker.decode()} confidentiel.\r\n")
    sent = M.encrypt(inner.encode(), [(domain_key, f"gateway@{OWN}")])
    reply, added = from_member(gw, pgp_mime(sent).replace(b"Message-ID: <", f"Message-ID: <{tag}.".encode(), 1))
    assert reply.startswith("250 2.0.0"), reply
    [qid] = added

    box = gw.a.home / "Maildir" / ALICE / "new"
    [delivered] = wait_for(lambda: [p for p in box.iterdir() if tag.encode() in p.read_bytes()]
                           if box.exists() else [], what="delivery to alice's mailbox")
    armor = re.search(rb"-----BEGIN PGP MESSAGE-----(.*?)-----END PGP MESSAGE-----",
                      delivered.read_bytes(), re.S).group(1)
    lines = [ln.strip() for ln in armor.splitlines() if len(ln.strip()) >= 60]  # what A stored
    lines += [ln.strip() for ln in sent.splitlines() if len(ln.strip()) >= 60]  # what J sent
    assert len(lines) >= 8 and marker not in delivered.read_bytes()

    db = gw.a.home / "securemail.db"
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]

    def at_rest() -> list[str]:
        found = []
        for f in files:
            data = f.read_bytes() if f.exists() else b""
            found += [f"{f.name}: {n[:24]!r}" for n in [marker, *lines] if n in data]
        return found

    wait_for(lambda: not at_rest(), timeout=30, what="the body to leave A's database files")
    # the search reads the right database: the message's metadata is still there, as it should be
    assert any(qid.encode() in f.read_bytes() for f in files if f.exists())

