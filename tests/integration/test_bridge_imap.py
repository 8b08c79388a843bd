"""The bridge's IMAP side against a real Dovecot holding real mail (issue 13), with real clients.

Dovecot (STARTTLS, tests/support/dovecot.py) holds alice's mailbox: the interop corpus (made by
gpg and sqop, hostile messages included), mail made by securemail (``send --output``), a
signer-mismatch and hostile shapes. ``securemail bridge serve`` runs as an OS process. mbsync
syncs every folder through it, then again after new mail and flag changes on both sides;
imaplib drives flags, MOVE, APPEND, SEARCH, IDLE (IMAPClient, imaplib underneath: imaplib
itself has no IDLE before 3.14) and the restart. The security tests: the failure budget, a
non-loopback listener refused, no plaintext marker anywhere under the home after a sync.
"""

from __future__ import annotations

import email
import logging
import secrets
import smtplib
import ssl
import time
from email import policy
from pathlib import Path

import pytest

from securemail.bridge.upstream import Endpoint
from securemail.crypto import message as M
from securemail.crypto.keys import load_key
from securemail.mail.compose import pgp_mime
from tests.support import Dovecot, free_port, ok, require_dovecot, run_cli
from tests.support.bridge import BridgeServe, Mbsync, bridge_home, require_mbsync

pytestmark = pytest.mark.timeout(300)

ALICE = "alice@interieur.gouv.fr"
GASTON = "gaston@justice.gouv.fr"
MARKER = "PLAINTEXT-MARKER-" + secrets.token_hex(6)
NOTICE = "[securemail] message not shown"


class World:
    def __init__(self, tmp: Path, corpus: dict) -> None:
        self.tmp, self.corpus = tmp, corpus
        self.dovecot = Dovecot(tmp / "dv", [ALICE]).start()
        self.sender = tmp / "gaston"
        ok(run_cli(self.sender, "keys", "generate", "--uid", f"Gaston Roux <{GASTON}>", "--no-passphrase"))
        ok(run_cli(self.sender, "keys", "import", str(corpus["dir"] / "keys" / "alice.pub.asc")))
        (tmp / "gaston.asc").write_bytes(ok(run_cli(self.sender, "keys", "export", GASTON)).stdout_bytes)
        keys = sorted((corpus["dir"] / "keys").glob("*.asc")) + [tmp / "gaston.asc"]
        self.home, self.creds = bridge_home(tmp, self.dovecot, ALICE, keys)
        self.expected: dict[str, dict] = {}   # Message-ID -> what the client must see
        self.bridge = BridgeServe(self.home, self.creds)

    def upstream(self):
        return self.dovecot.imap(ALICE)

    def deliver(self, raw: bytes) -> None:
        """LMTP delivery into alice's INBOX, as the gateway's delivery.local = "lmtp" does."""
        with smtplib.LMTP("127.0.0.1", self.dovecot.lmtp_port) as lmtp:
            lmtp.sendmail("sender@justice.gouv.fr", [ALICE], raw)

    def sent_by_securemail(self, subject: str, body: str) -> bytes:
        out = self.tmp / f"sent-{secrets.token_hex(4)}.eml"
        (self.tmp / "body.txt").write_text(body)
        ok(run_cli(self.sender, "send", "--from", GASTON, "--to", ALICE, "--subject", subject,
                   "--body-file", str(self.tmp / "body.txt"), "--output", str(out)))
        return out.read_bytes()

    def mismatched(self) -> bytes:
        """Signed by gaston's key, while its protected From says bruno: signer-mismatch."""
        gaston = load_key(ok(run_cli(self.sender, "keys", "export", GASTON, "--secret")).stdout_bytes)
        alice = load_key((self.corpus["dir"] / "keys" / "alice.pub.asc").read_bytes())
        inner = (b"From: Bruno Petit <bruno@justice.gouv.fr>\r\nTo: " + ALICE.encode() + b"\r\n"
                 b"Subject: Pas de Bruno\r\nContent-Type: text/plain\r\n\r\nSigne par Gaston.\r\n")
        with gaston.pgp.unlocked(None):
            armored = M.encrypt(inner, [(alice, ALICE)], signer=gaston)
        return pgp_mime({"From": "bruno@justice.gouv.fr", "To": ALICE, "Message-ID": "<mismatch@justice.gouv.fr>",
                         "Date": "Thu, 03 Dec 2026 09:00:00 +0000"}, armored)

    def close(self) -> None:
        self.bridge.stop()
        self.dovecot.stop()


def hostile_shapes() -> list[tuple[str, bytes, str]]:
    """(name, message, what the client must see): beyond the corpus's own hostile mail."""
    forged = (f"From: bruno@justice.gouv.fr\r\nTo: {ALICE}\r\nSubject: Faux statut\r\n"
              "Securemail-Status: encrypted=yes; signature=valid; signer=00\r\n"
              "Message-ID: <forged@x>\r\n\r\nTexte.\r\n").encode()
    deep = (b"From: x@justice.gouv.fr\r\nSubject: Profond\r\nMessage-ID: <deep@x>\r\n"
            + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(40))
            + b"Content-Type: text/plain\r\n\r\nfond\r\n")
    garbage = (b"From: x@justice.gouv.fr\r\nSubject: Chiffre?\r\nMessage-ID: <garbage@x>\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="g"\r\n\r\n'
               b"--g\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--g\r\n"
               b"Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
               b"AAAAAAAAAAAAAAAA\r\n-----END PGP MESSAGE-----\r\n--g--\r\n")
    return [("forged-status", forged, "status"), ("too-deep", deep, "notice"), ("garbage-armor", garbage, "notice")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus):
    require_dovecot()
    require_mbsync()
    w = World(tmp_path_factory.mktemp("bridge"), corpus)
    try:
        up = w.upstream()
        for m in corpus["mail"]:
            up.append("INBOX", None, None, (corpus["dir"] / m["file"]).read_bytes())
        up.logout()
        w.deliver(w.sent_by_securemail("Note du ministre", f"Confidentiel.\n{MARKER}\n"))
        w.deliver(w.mismatched())
        for _, raw, _ in hostile_shapes():
            w.deliver(raw)
        w.bridge.start()
        yield w
    finally:
        w.close()


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


def status(msg) -> dict:
    value = msg.get_all("Securemail-Status")
    assert value and len(value) == 1, f"one Securemail-Status, not {value}"
    return dict(p.strip().split("=", 1) for p in str(value[0]).split(";"))


def text_of(msg) -> str:
    return "\n".join(p.get_content() for p in msg.walk() if p.get_content_type() == "text/plain")


def check_corpus_message(m: dict, msg) -> None:
    """What the client sees of one corpus message, as its manifest says a reader must conclude."""
    st, shown = status(msg), text_of(msg)
    if m["expect"] == "refuse" or m["file"].endswith("compression-bomb.eml"):
        assert str(msg["Subject"]).startswith(NOTICE), (m["file"], msg["Subject"])
        assert st.get("refused") == "yes"
        if m.get("must_not_show"):
            assert m["must_not_show"] not in msg.as_string()
        return
    if m["expect"] == "show":
        assert st["encrypted"] == "yes" and st["signature"] == m["signature"], (m["file"], st)
        if m.get("signer"):
            assert st["signer"] == m["signer"]
        if m.get("subject"):
            assert str(msg["Subject"]) == m["subject"]
        if m.get("body_contains"):
            assert m["body_contains"] in shown
        names = [p.get_filename() for p in msg.walk() if p.get_filename()]
        for att in m.get("attachments", []):
            assert att in names, (m["file"], names)
    else:  # plaintext, never presented as encrypted
        assert st["encrypted"] == "no", (m["file"], st)
        assert st["signature"] == m.get("signature", "none"), (m["file"], st)


def by_message_id(files: list[Path]) -> dict[str, object]:
    out = {}
    for f in files:
        msg = parse(f.read_bytes())
        out[str(msg["Message-ID"] or f.name).strip()] = msg
    return out


def upstream_ids(world) -> dict[str, str]:
    """Message-ID -> corpus file, from the corpus's own (outer) Message-IDs."""
    ids = {}
    for m in world.corpus["mail"]:
        outer = parse((world.corpus["dir"] / m["file"]).read_bytes())
        ids[str(outer["Message-ID"]).strip()] = m
    return ids


# --- mbsync: a full sync, then an incremental one ---------------------------------------------
def test_mbsync_full_then_incremental(world):
    sync = Mbsync(world.tmp / "client", "127.0.0.1", world.bridge.port, world.creds["username"],
                  world.creds["password"], world.creds["certificate"])
    sync.run()
    seen = by_message_id(sync.files())
    expected = upstream_ids(world)
    assert len(seen) == len(expected) + 2 + len(hostile_shapes())
    for mid, m in expected.items():
        check_corpus_message(m, seen[mid])
    ours = next(v for v in seen.values() if str(v["Subject"]) == "Note du ministre")
    assert MARKER in text_of(ours) and status(ours)["signature"] == "valid" and status(ours)["encrypted"] == "yes"
    assert status(seen["<mismatch@justice.gouv.fr>"])["signature"] == "signer-mismatch"
    forged = seen["<forged@x>"]
    assert status(forged) == {"encrypted": "no", "signature": "none"}  # the forged one removed
    for mid in ("<deep@x>", "<garbage@x>"):
        assert str(seen[mid]["Subject"]).startswith(NOTICE) and status(seen[mid]).get("refused") == "yes"

    # new mail upstream, a flag set upstream, a flag set by the client
    world.deliver(world.sent_by_securemail("Deuxieme note", "Suite.\n"))
    up = world.upstream()
    up.select("INBOX")
    up.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    up.logout()
    local = next(f for f in sync.files() if str(parse(f.read_bytes())["Subject"]) == "Note du ministre")
    marked = local.parent.parent / "cur" / (local.name.split(":2,")[0] + ":2,S")
    local.rename(marked)
    took = sync.run()
    after = by_message_id(sync.files())
    assert any(str(m["Subject"]) == "Deuxieme note" for m in after.values())
    flagged = [f for f in sync.files() if ":2," in f.name and "F" in f.name.split(":2,")[1]]
    assert len(flagged) == 1, [f.name for f in sync.files()]
    up = world.upstream()
    up.select("INBOX")
    seen_up = up.uid("SEARCH", "SEEN")[1][0].split()
    up.logout()
    assert len(seen_up) == 1, seen_up
    assert took < 30


def test_no_plaintext_under_the_home_after_a_sync(world):
    markers = [MARKER.encode()] + [m["body_contains"].encode() for m in world.corpus["mail"] if m.get("body_contains")]
    for path in world.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for marker in markers:
                assert marker not in data, f"{marker!r} in {path}"


# --- imaplib: flags, MOVE, APPEND, SEARCH ------------------------------------------------------
def test_flags_search_move_and_append(world):
    c = world.bridge.client()
    try:
        assert c.select("INBOX")[0] == "OK"
        uid = c.uid("SEARCH", "SUBJECT", '"Reunion gpg"')[1][0].split()
        assert len(uid) == 1  # the protected Subject: upstream it is "..."
        uid = uid[0].decode()
        assert c.uid("SEARCH", "BODY", "visible-sqop-1")[1][0].split()  # body search, decrypted
        assert c.uid("SEARCH", "SUBJECT", "...")[1][0].split() != [uid.encode()]
        c.uid("STORE", uid, "+FLAGS", "(\\Answered)")
        assert c.create("Archive")[0] == "OK"
        assert c.uid("MOVE", uid, "Archive")[0] == "OK"
        assert uid.encode() not in c.uid("SEARCH", "ALL")[1][0].split()
        c.select("Archive")
        got = c.uid("SEARCH", "ALL")[1][0].split()
        assert len(got) == 1
        typ, data = c.uid("FETCH", got[0], "(FLAGS BODY.PEEK[])")
        assert b"\\Answered" in data[0][0]
        assert str(parse(data[0][1])["Subject"]) == "Reunion gpg 0"
        assert c.uid("COPY", got[0], "INBOX")[0] == "OK"            # COPY back, then EXPUNGE here
        c.uid("STORE", got[0], "+FLAGS", "(\\Deleted)")
        assert c.expunge()[0] == "OK" and c.uid("SEARCH", "ALL")[1][0].split() == []
        assert c.create("Tmp")[0] == "OK" and c.rename("Tmp", "Tmp2")[0] == "OK"
        assert c.delete("Tmp2")[0] == "OK"
        draft = (f"From: {ALICE}\r\nTo: {GASTON}\r\nSubject: Brouillon\r\n\r\nBrouillon {MARKER}\r\n").encode()
        c.create("Drafts")
        assert c.append("Drafts", "(\\Draft)", None, draft)[0] == "OK"
        c.select("Drafts")
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        shown = parse(data[0][1])
        assert MARKER in text_of(shown) and status(shown)["encrypted"] == "yes" and status(shown)["signature"] == "valid"
        assert b"\\Seen" not in c.fetch("1", "(FLAGS)")[1][0]
        assert MARKER.encode() in c.fetch("1", "(BODY[])")[1][0][1]    # not PEEK: marked read, upstream too
        assert b"\\Seen" in c.fetch("1", "(FLAGS)")[1][0]
    finally:
        c.logout()
    stored = world.dovecot.messages(ALICE, "Drafts")
    assert len(stored) == 1 and MARKER.encode() not in stored[0] and b"multipart/encrypted" in stored[0]
    assert world.dovecot.messages(ALICE, "Archive") == []                  # expunged upstream
    up = world.upstream()
    up.select("Drafts")
    assert b"\\Seen" in up.fetch("1", "(FLAGS)")[1][0]
    folders = b" ".join(line for line in up.list()[1])
    up.logout()
    assert b"Archive" in folders and b"Drafts" in folders and b"Tmp" not in folders


def test_idle_announces_new_mail_within_two_seconds(world):
    from imapclient import IMAPClient
    c = IMAPClient("127.0.0.1", world.bridge.port, ssl=False, timeout=30)
    c.starttls(ssl.create_default_context(cafile=world.creds["certificate"]))
    c.login(world.creds["username"], world.creds["password"])
    try:
        before = c.select_folder("INBOX")[b"EXISTS"]
        c.idle()
        time.sleep(1.0)  # the bridge's own IDLE upstream is in place
        sent = time.monotonic()
        world.deliver(world.sent_by_securemail("Pendant IDLE", "Nouveau.\n"))
        pushed = []
        while time.monotonic() - sent < 2.0 and not pushed:
            pushed = [r for r in c.idle_check(timeout=0.2) if len(r) > 1 and r[1] == b"EXISTS"]
        took = time.monotonic() - sent
        c.idle_done()
        assert pushed and pushed[0][0] > before, f"no EXISTS within 2 s ({took:.2f} s)"
    finally:
        c.logout()


def test_hostile_messages_leave_the_bridge_serving(world):
    c = world.bridge.client()
    try:
        c.select("INBOX")
        for m in world.corpus["mail"]:
            if m.get("must_not_show"):
                found = c.uid("SEARCH", "BODY", '"' + m["must_not_show"].replace('"', '') + '"')[1][0].split()
                assert found == [], m["file"]
        assert c.noop()[0] == "OK"
    finally:
        c.logout()


def test_uids_and_uidvalidity_survive_a_restart(world):
    c = world.bridge.client()
    c.select("INBOX")
    before = (c.response("UIDVALIDITY")[1], c.uid("SEARCH", "ALL")[1][0])
    c.logout()
    world.bridge.stop()
    world.bridge.start()
    c = world.bridge.client()
    c.select("INBOX")
    after = (c.response("UIDVALIDITY")[1], c.uid("SEARCH", "ALL")[1][0])
    c.logout()
    assert before == after


# --- security ------------------------------------------------------------------------------------
def test_wrong_password_refused_then_locked(world, tmp_path):
    home, creds = bridge_home(tmp_path, world.dovecot, ALICE, sorted((world.corpus["dir"] / "keys").glob("*.asc")))
    other = BridgeServe(home, creds).start()
    try:
        for _ in range(10):
            with pytest.raises(Exception, match="AUTHENTICATIONFAILED|Invalid"):
                other.client(password="wrong")
        with pytest.raises(Exception, match="Too many failed logins"):
            other.client()  # the right password, from a source over its budget
    finally:
        other.stop()


def test_a_verbose_bridge_logs_no_password_and_no_message(world, tmp_path):
    """``securemail --verbose bridge serve`` logs at DEBUG; pymap would log there every command
    (the local password in LOGIN) and every response (each message shown, decrypted), and
    serialise every response a second time for it whatever the level. Neither reaches the log."""
    home, creds = bridge_home(tmp_path, world.dovecot, ALICE, sorted((world.corpus["dir"] / "keys").glob("*.asc")))
    other = BridgeServe(home, creds, verbose=True).start()
    try:
        c = other.client()
        c.select("INBOX")
        fetched = c.uid("FETCH", "1:*", "(BODY.PEEK[])")[1]
        c.logout()
    finally:
        other.stop()
    bodies = [part[1] for part in fetched if isinstance(part, tuple)]
    assert len(bodies) >= 10 and any(MARKER.encode() in b for b in bodies)   # shown, decrypted
    logged = other.log.read_text(errors="replace")
    assert "DEBUG" in logged   # the log is at DEBUG
    assert creds["password"] not in logged and MARKER not in logged
    for body in bodies:
        piece = body[len(body) // 2:len(body) // 2 + 40].decode("latin-1")
        assert piece not in logged


def test_a_listener_off_loopback_is_refused(world, tmp_path):
    home, _ = bridge_home(tmp_path, world.dovecot, ALICE, [world.corpus["dir"] / "keys" / "alice.sec.asc"],
                          imap_listen=f"0.0.0.0:{free_port()}")
    res = run_cli(home, "bridge", "serve")
    assert res.exit_code == 2
    assert "not a loopback address" in res.output and "--allow-remote" in res.output


def test_upstream_responses_go_through_no_log_formatter(world, caplog):
    """What the upstream sends (here ciphertext) is never formatted for a log, even at DEBUG:
    imaplib under IMAPClient would format each response, whole literals included."""
    dv = world.dovecot
    endpoint = Endpoint("127.0.0.1", dv.imap_port, False, ssl.create_default_context(cafile=str(dv.cert)),
                        ALICE, dv.users[ALICE])
    client = endpoint.connect()
    try:
        with caplog.at_level(logging.DEBUG):
            client.select_folder("INBOX")
            got = client.fetch(client.search("ALL")[:5], ["BODY.PEEK[]"])
    finally:
        client.logout()
    bodies = [item[b"BODY[]"] for item in got.values()]
    assert len(bodies) == 5 and all(len(b) > 400 for b in bodies)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SEARCH" in logged   # the commands are still logged at DEBUG, by IMAPClient
    for body in bodies:
        piece = body[len(body) // 2:len(body) // 2 + 40].decode("latin-1")
        assert piece not in logged
