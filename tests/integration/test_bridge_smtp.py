"""The bridge's SMTP submission (issue 13) with a real client and a real upstream.

Two gateways with key directories (test_key_directory's federation); alice's bridge listens on
loopback with STARTTLS and AUTH and submits to her gateway's submission listener, which passes
what the bridge encrypted on to justice's gateway and its Maildirs. neomutt, in batch mode, sends
plain MIME through the bridge; the recipients' ``securemail read --json`` decrypts each copy and
verifies alice's signature, and the Bcc copies are checked not to reveal the Bcc, in clear or
inside. Every message the upstream received is kept (a spy on both gateways' intake) and scanned
for the plaintext marker. smtplib speaks to the bridge for what a mail client would not do on
purpose: a keyless recipient, another sender, wrong passwords, a message over the size limit.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from securemail.admin.setup import self_signed_cert
from securemail.app import open_home, open_locator
from securemail.bridge.submission import Submission, is_loopback, key_lookup
from securemail.bridge.submission_upstream import Upstream
from securemail.config import AuthBudget, Limits
from securemail.crypto import message as M
from securemail.errors import ConfigError
from securemail.mail.outgoing import signing_key
from securemail.policy.encryption import check
from securemail.smtp.handler import GatewayHandler
from securemail.smtp.server import make_server
from tests.conftest import run_cli

from tests.support import Running, free_port, ok, wait_for
from .test_key_directory import Fed, directory_federation, maildir

A, B = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO, CAROLE, DENISE, ERWAN = (f"alice@{A}", f"bruno@{B}", f"carole@{B}", f"denise@{B}", f"erwan@{B}")
MARKER = "BRIDGE-PLAINTEXT-4e1d"
SIZE = 256 << 10  # the bridge's message size limit here


def _require_neomutt() -> str:
    path = shutil.which("neomutt")
    if path is None:
        why = "neomutt is not installed (Debian package neomutt)"
        if os.environ.get("CI"):  # under CI a missing client is a failure, as tests/support does
            pytest.fail(why)
        pytest.skip(why)
    return path


class Bridge:
    """Alice's bridge in the gateways' event loop, and what the upstream received."""

    def __init__(self, fed: Fed, running: Running, received: list) -> None:
        self.fed, self.running, self.received = fed, running, received
        self.tmp = fed.tmp / "bridge"
        self.cert, self.key = self.tmp / "cert.pem", self.tmp / "key.pem"
        self_signed_cert("localhost", self.cert, self.key)
        self.password = secrets.token_urlsafe(24)
        self.core = open_home(fed.people[ALICE])
        self.signer = signing_key(self.core.keys, ALICE, self.core.keys.clock())
        self.signer.pgp.unlocked(None).__enter__()  # unlocked once, as serve does
        self.lookup = key_lookup(self.core.keys, open_locator(self.core))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def upstream(self, **kw) -> Upstream:
        g = self.fed.homes[A]
        values = dict(host="127.0.0.1", port=g.submission, username=ALICE,
                      password=self.fed.pw.read_text().strip(), cafile=str(g.cert), timeout=30)
        return Upstream(**{**values, **kw})

    def make(self, **kw) -> Submission:
        values = dict(keys=self.core.keys, identity=ALICE, signing_key=self.signer, upstream=self.upstream(),
                      tls_context=self.server_context(), local_username="alice", local_password=self.password,
                      lookup=self.lookup, listen_host="127.0.0.1", listen_port=0, limits=Limits(message_size=SIZE))
        return Submission(**{**values, **kw})

    def start(self, sub: Submission) -> Submission:
        self.running.call(sub.start())
        return sub

    def stop(self, sub: Submission) -> None:
        self.running.call(sub.stop())

    def client(self, sub: Submission, password: str | None = None) -> smtplib.SMTP:
        """A session on ``sub`` after STARTTLS and one AUTH PLAIN; SMTPAuthenticationError if refused."""
        s = smtplib.SMTP("127.0.0.1", sub.port, timeout=60)
        s.starttls(context=ssl.create_default_context(cafile=str(self.cert)))
        s.ehlo()
        code, text = auth_plain(s, self.password if password is None else password)
        if code != 235:
            s.close()
            raise smtplib.SMTPAuthenticationError(code, text)
        return s

    def upstream_messages(self) -> list[bytes]:
        """What alice's gateway received on its submission listener: the bridge's copies."""
        return [env.data for listener, env in self.received if listener == "submission"]


def auth_plain(s: smtplib.SMTP, password: str, user: str = "alice") -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login would try the next mechanism after a refusal)."""
    return s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge-smtp")
    homes, wkd, fpr = directory_federation(tmp)
    fed = Fed(tmp, homes, wkd, fpr)
    for address in (ALICE, BRUNO, CAROLE, DENISE):
        ok(run_cli(fed.gw(address).home, "gateway", "user", "add", address, "--password-file", str(fed.pw)))
    fed.people = {a: fed.person(a) for a in (ALICE, BRUNO, CAROLE, DENISE)}
    received: list = []  # (listener, Envelope) for every DATA either gateway was handed

    def spy(gw):
        orig = gw.pipeline.accept

        async def accept(env, listener):
            received.append((listener.name, env))
            return await orig(env, listener)
        gw.pipeline.accept = accept

    with Running(*homes.values(), wrap=spy, cpu_workers=0) as running:
        for address in (ALICE, BRUNO, CAROLE, DENISE):  # erwan publishes nothing: he has no key
            ok(fed.publish(fed.people[address], address), f"publish {address}")
        b = Bridge(fed, running, received)
        b.sub = b.start(b.make())
        yield b
        b.stop(b.sub)
        b.core.close()


def neomutt(b: Bridge, to: str, subject: str, body: str, *, bcc: str = "", attach: Path | None = None):
    """neomutt in batch mode through the bridge: STARTTLS, AUTH, the local certificate trusted by its
    file (the host is checked against it: 127.0.0.1 is in its subjectAltName)."""
    home = b.tmp / "neomutt-home"
    home.mkdir(exist_ok=True)
    rc = home / "muttrc"
    rc.write_text(f"""\
set from = "Alice Martin <{ALICE}>"
set use_from = yes
set hostname = "{A}"
set smtp_url = "smtp://alice@127.0.0.1:{b.sub.port}/"
set smtp_pass = "{b.password}"
set ssl_starttls = yes
set ssl_force_tls = yes
set certificate_file = "{b.cert}"
set record = ""
set copy = no
""")
    rc.chmod(0o600)
    argv = [_require_neomutt(), "-n", "-F", str(rc), "-s", subject]
    argv += ["-b", bcc] if bcc else []
    argv += ["-a", str(attach)] if attach else []
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run([*argv, "--", to], input=body, capture_output=True, text=True, timeout=120, env=env)


def opened(home: Path, path: Path) -> tuple[bytes, set[str]]:
    """The inner entity of a delivered copy, decrypted with ``home``'s secret key, and the key IDs the
    copy is encrypted to."""
    raw = path.read_bytes()
    enc = check(raw)
    assert enc.encrypted, enc.reason
    core = open_home(home)
    try:
        secrets_ = core.keys.secret_keys()
        for k in secrets_:
            k.pgp.unlocked(None).__enter__()
        return M.decrypt(enc.payload, secrets_, core.keys.lookup).data, set(enc.recipient_keyids)
    finally:
        core.close()


def keyids(home: Path, address: str) -> set[str]:
    core = open_home(home)
    try:
        return set(core.keys.usable_for(address).keyids)
    finally:
        core.close()


def read_json(home: Path, path: Path) -> dict:
    res = run_cli(home, "read", "--json", str(path))
    return json.loads(res.stdout)[0]


def test_neomutt_sends_signed_and_encrypted_and_each_bcc_gets_a_copy_of_its_own(bridge):
    b, fed = bridge, bridge.fed
    g = fed.homes[B]
    before = {a: len(maildir(g, a)) for a in (BRUNO, CAROLE, DENISE)}
    sent_before = len(b.upstream_messages())
    attach = b.tmp / "ordre-du-jour.txt"
    attach.write_text(f"Point 1 {MARKER}\n")
    out = neomutt(b, BRUNO, f"Conseil {MARKER}", f"Monsieur le ministre, {MARKER} par le pont.\n",
                  bcc=f"{CAROLE}, {DENISE}", attach=attach)
    assert out.returncode == 0, out.stdout + out.stderr
    got = {a: wait_for(lambda a=a: maildir(g, a)[before[a]:], what=f"delivery to {a}")[0]
           for a in (BRUNO, CAROLE, DENISE)}
    alice_fpr = fed.fpr_of(fed.people[ALICE], ALICE)
    for who, path in got.items():
        r = read_json(fed.people[who], path)
        assert (r["encrypted"], r["decrypted"], r["signature"], r["signer"]) == (True, True, "valid", alice_fpr), r
        assert r["subject"] == f"Conseil {MARKER}" and MARKER in r["body"] and r["from"] == f"Alice Martin <{ALICE}>"
        assert [a["name"] for a in r["attachments"]] == ["ordre-du-jour.txt"], r
        assert MARKER.encode() not in path.read_bytes()                 # nothing readable in the file
        assert b"Subject: ...\r\n" in path.read_bytes() or b"Subject: ...\n" in path.read_bytes()
    # the visible copy: encrypted to bruno and alice only, and naming neither Bcc anywhere
    inner, ids = opened(fed.people[BRUNO], got[BRUNO])
    kb, ka = keyids(fed.people[BRUNO], BRUNO), keyids(fed.people[ALICE], ALICE)
    assert ids <= kb | ka and ids & kb and ids & ka, (ids, kb, ka)
    for blind in (CAROLE, DENISE):
        assert not ids & keyids(fed.people[blind], blind)
        assert blind.encode() not in got[BRUNO].read_bytes() and blind.encode() not in inner
    assert not re.search(rb"(?im)^bcc:", inner) and MARKER.encode() in inner
    # each Bcc copy: encrypted to that recipient alone, naming no other Bcc, unreadable by bruno
    for blind, other in ((CAROLE, DENISE), (DENISE, CAROLE)):
        inner, ids = opened(fed.people[blind], got[blind])
        assert ids and ids <= keyids(fed.people[blind], blind)
        assert other.encode() not in inner and other.encode() not in got[blind].read_bytes()
        assert not re.search(rb"(?im)^bcc:", inner)
        assert read_json(fed.people[BRUNO], got[blind])["decrypted"] is False
    # upstream got three copies (one visible, two blind), none with the marker or a Bcc in clear
    copies = b.upstream_messages()[sent_before:]
    assert len(copies) == 3
    assert all(MARKER.encode() not in c and not re.search(rb"(?im)^bcc:", c) for c in copies)


def test_a_recipient_without_a_key_is_refused_at_rcpt_naming_the_address(bridge):
    b = bridge
    sent_before = len(b.upstream_messages())
    with b.client(b.sub) as s:
        assert s.mail(ALICE)[0] == 250
        code, text = s.rcpt(ERWAN)
        assert code == 550 and text.startswith(b"5.7.1 ") and ERWAN.encode() in text, text
        assert b"the directory of justice.gouv.fr has no key for" in text, text  # and why
        assert s.rcpt(BRUNO)[0] == 250
    out = neomutt(b, ERWAN, f"Pour Erwan {MARKER}", f"{MARKER}\n")
    assert out.returncode != 0
    assert len(b.upstream_messages()) == sent_before                   # nothing left, in clear or not


def test_another_sender_is_refused_in_the_envelope_and_in_from(bridge):
    b = bridge
    sent_before = len(b.upstream_messages())
    with b.client(b.sub) as s:
        code, text = s.mail(BRUNO)
        assert code == 550 and text.startswith(b"5.7.1 ") and ALICE.encode() in text
        assert s.rcpt(BRUNO)[0] == 503                                    # no transaction was begun
        for sender in (f"Bruno <{BRUNO}>", f"{ALICE}, {BRUNO}"):
            s.rset()
            assert s.mail(ALICE)[0] == 250 and s.rcpt(BRUNO)[0] == 250
            msg = f"From: {sender}\r\nTo: {BRUNO}\r\nSubject: x\r\n\r\n{MARKER}\r\n"
            code, text = s.data(msg.encode())
            assert code == 550 and text.startswith(b"5.7.1 "), (sender, text)
        s.rset()
        assert s.mail(ALICE)[0] == 250 and s.rcpt(BRUNO)[0] == 250
        msg = f"From: {ALICE}\r\nSender: {BRUNO}\r\nTo: {BRUNO}\r\nSubject: x\r\n\r\n{MARKER}\r\n"
        assert s.data(msg.encode())[0] == 550
    assert len(b.upstream_messages()) == sent_before


def test_a_bcc_header_is_removed_and_a_message_over_the_limit_refused(bridge):
    """A client that writes Bcc (and gives no Date or Message-ID): every copy loses it; a message over
    the size limit is refused before any work."""
    b, g = bridge, bridge.fed.homes[B]
    before = {a: len(maildir(g, a)) for a in (BRUNO, CAROLE)}
    sent_before = len(b.upstream_messages())
    msg = (f"From: {ALICE}\r\nTo: {BRUNO}\r\nBcc: {CAROLE}\r\nSubject: Note\r\n"
           f"X-Note: {MARKER}\r\n\r\nTexte {MARKER}.\r\n")
    with b.client(b.sub) as s:
        refused = s.sendmail(ALICE, [BRUNO, CAROLE], msg.encode())
        assert refused == {}
        big = f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: big\r\n\r\n".encode() + (b"x" * 998 + b"\r\n") * (SIZE // 1000 + 1)
        assert s.mail(ALICE)[0] == 250 and s.rcpt(BRUNO)[0] == 250
        code, text = s.data(big)
        assert code == 552 and text.startswith(b"5.3.4"), text
    copies = b.upstream_messages()[sent_before:]
    assert len(copies) == 2 and all(MARKER.encode() not in c and b"Bcc" not in c for c in copies)
    assert all(re.search(rb"(?m)^Message-ID: <", c) and re.search(rb"(?m)^Date: ", c) for c in copies)
    wait_for(lambda: maildir(g, BRUNO)[before[BRUNO]:], what="bruno's copy")
    path = wait_for(lambda: maildir(g, CAROLE)[before[CAROLE]:], what="carole's copy")[0]
    inner, _ = opened(b.fed.people[CAROLE], path)
    assert MARKER.encode() in inner and not re.search(rb"(?im)^bcc:", inner) and CAROLE.encode() not in inner


def test_a_copy_the_upstream_refuses_is_answered_with_who_already_has_one(bridge):
    """Zoe, at a domain outside the federation, has a key alice imported: the bridge seals her blind
    copy, and alice's gateway refuses it after it took bruno's. The client learns both."""
    b, g = bridge, bridge.fed.homes[B]
    zoe = b.tmp / "zoe"
    ok(run_cli(zoe, "keys", "generate", "--uid", "Zoe <zoe@example.org>", "--no-passphrase"))
    ok(run_cli(b.fed.people[ALICE], "keys", "import", "-",
               input=ok(run_cli(zoe, "keys", "export", "zoe@example.org")).stdout_bytes))
    before = len(maildir(g, BRUNO))
    msg = f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: Partiel\r\n\r\n{MARKER}\r\n"
    with b.client(b.sub) as s:
        assert s.mail(ALICE)[0] == 250 and s.rcpt(BRUNO)[0] == 250 and s.rcpt("zoe@example.org")[0] == 250
        code, text = s.data(msg.encode())
    assert code == 550 and text.startswith(b"5.7.1 "), text
    assert b"not a federation member" in text and f"already sent to {BRUNO}".encode() in text, text
    path = wait_for(lambda: maildir(g, BRUNO)[before:], what="bruno's copy")[0]
    assert read_json(b.fed.people[BRUNO], path)["subject"] == "Partiel"


def test_the_copies_of_a_message(bridge):
    """Who gets which copy, without sockets: To and Cc together with the sender, each other envelope
    recipient alone, whatever the case or a group syntax."""
    from securemail.bridge.submission_copies import Copy, plan
    from securemail.mail.headers import parse_header_block
    head = (f"From: {ALICE}\r\nTo: Bruno <{BRUNO.upper()}>, undisclosed-recipients:;\r\n"
            f"Cc: {CAROLE}\r\nBcc: {DENISE}\r\n\r\n").encode()
    block = parse_header_block(head)
    assert plan(ALICE, block, [BRUNO, DENISE, CAROLE, BRUNO, ALICE]) == [
        Copy((BRUNO, CAROLE), (BRUNO, CAROLE, ALICE)), Copy((DENISE,), (DENISE,)), Copy((ALICE,), (ALICE,))]
    assert plan(ALICE, parse_header_block(b"To: undisclosed-recipients:;\r\n\r\n"), [BRUNO]) == [
        Copy((BRUNO,), (BRUNO,))]

def test_wrong_password_is_refused_with_a_failure_budget(bridge):
    b = bridge
    budget = AuthBudget(max_failures=3, failure_window=600, lock_seconds=600, session_failures=2)
    sub = b.start(b.make(auth_budget=budget))
    try:
        ctx = ssl.create_default_context(cafile=str(b.cert))
        with smtplib.SMTP("127.0.0.1", sub.port, timeout=30) as s:
            s.ehlo()
            assert s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 530           # no AUTH before STARTTLS
            assert s.mail(ALICE)[0] == 530
            s.starttls(context=ctx)
            s.ehlo()
            assert s.mail(ALICE)[0] == 530                                   # no MAIL before AUTH
            for _ in range(2):
                code, text = auth_plain(s, "wrong")
                assert code == 535 and text.startswith(b"5.7.8"), text
            assert auth_plain(s, b.password)[0] == 421                       # third in a session: closed
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            b.client(sub, "wrong again")                                     # the third failure: locked
        assert e.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            b.client(sub)                                                    # even the right password
        assert e.value.smtp_code == 454
        with b.client(b.sub) as s:                                           # another bridge: its own budget
            assert s.noop()[0] == 250
    finally:
        b.stop(sub)


def test_only_loopback_unless_allowed(bridge):
    b = bridge
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.2")
    for host in ("0.0.0.0", "::", "192.0.2.1", "localhost", ""):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="loopback"):
            b.make(listen_host=host)
    sub = b.make(listen_host="0.0.0.0", allow_remote=True)   # built, never started: allowed on request
    assert sub.host == "0.0.0.0"
    with pytest.raises(ConfigError, match="CA file"):
        b.make(upstream=b.upstream(cafile=str(b.tmp / "missing.pem")))


def test_an_upstream_without_starttls_or_trusted_certificate_gets_nothing(bridge):
    """Nothing is sent to a submission server that offers no STARTTLS (a real plain SMTP server that
    records what reaches it), nor to one whose certificate is not the one trusted; a submission
    server that refuses the bridge's login (a password changed upstream) is said as such."""
    b = bridge
    got: list = []

    def accept(env):
        got.append(env)
        return "250 2.0.0 OK"

    plain = make_server(GatewayHandler(lambda s, a: None, accept), "127.0.0.1", 0)
    b.running.call(plain.start())
    try:
        for upstream, expect in ((b.upstream(port=plain.port), b"4.7.0"),                # no STARTTLS
                                 (b.upstream(cafile=str(b.fed.homes[B].cert)), b"4.7.0"),  # not its cert
                                 (b.upstream(port=free_port()), b"4.4.1"),                 # nobody there
                                 (b.upstream(password="changed-upstream"),                 # login refused
                                  b"4.7.0 The submission server refused the bridge's login")):
            sub = b.start(b.make(upstream=upstream))
            try:
                with b.client(sub) as s:
                    msg = f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: s\r\n\r\n{MARKER}\r\n"
                    with pytest.raises(smtplib.SMTPDataError) as e:
                        s.sendmail(ALICE, [BRUNO], msg.encode())
                    assert e.value.smtp_code == 451 and e.value.smtp_error.startswith(expect), e.value
            finally:
                b.stop(sub)
    finally:
        b.running.call(plain.stop())
    assert got == []


def test_nothing_in_clear_ever_reached_the_upstream(bridge):
    """Every message either gateway received while these tests ran: none carries the marker, and
    everything alice's gateway got from the bridge is PGP/MIME to the outer Subject."""
    b = bridge
    with b.client(b.sub) as s:
        msg = (f"From: {ALICE}\r\nTo: {BRUNO}\r\nSubject: {MARKER}\r\nKeywords: {MARKER}\r\n"
               f"Content-Type: text/html\r\n\r\n<p>{MARKER}</p>\r\n")
        assert s.sendmail(ALICE, [BRUNO], msg.encode()) == {}
    assert len(b.upstream_messages()) >= 1
    for listener, env in b.received:
        assert MARKER.encode() not in env.data, listener
    for data in b.upstream_messages():
        assert check(data).encrypted and re.search(rb"(?m)^Subject: \.\.\.\r$", data)
