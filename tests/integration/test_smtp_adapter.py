"""SMTP adapter against real clients: a server on 127.0.0.1, smtplib and raw sockets.

Every hardening in securemail.smtp.server has a test here asserting the exact
reply and that the store was not called.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from securemail.errors import ConfigError, PolicyRefusal
from securemail.config import Limits
from securemail.smtp import GatewayHandler, make_server, replies, running_server

pytestmark = pytest.mark.timeout(60)
GOOD, OTHER = b"<alice@gov.test>", b"<bob@gov.test>"


class Recorder:
    """Decision and store for the tests: records what the adapter hands over."""

    def __init__(self) -> None:
        self.stored: list = []

    def decide_rcpt(self, session, address):
        if address.startswith("boom@"):
            raise RuntimeError("rcpt table at /var/lib/secret")
        return None if address.endswith("@gov.test") else replies.RELAY_DENIED

    async def accept_data(self, envelope):
        if b"X-Test: unexpected" in envelope.data:
            raise RuntimeError("disk full at /var/spool/secret")
        if b"X-Test: malformed" in envelope.data:
            return "250 OK\r\n250 injected"
        if b"X-Test: policy" in envelope.data:
            raise PolicyRefusal("message is not encrypted", detail="no PGP/MIME")
        self.stored.append(envelope)
        return replies.OK


class Raw:
    """A raw-socket SMTP client that can send anything."""

    opened: list[Raw] = []

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(source, 0))
        Raw.opened.append(self)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self) -> str:
        """The next complete reply, lines joined by newlines; "" at EOF."""
        while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n", self.buf):
            data = self.sock.recv(65536)
            if not data:
                return ""
            self.buf += data
        end = re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n", self.buf).end()
        text, self.buf = self.buf[:end], self.buf[end:]
        return text.decode().rstrip("\r\n").replace("\r\n", "\n")

    def cmd(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def at_eof(self) -> bool:
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def start_data(self, helo: bytes = b"EHLO client.test") -> None:
        assert self.reply().startswith("220 ")
        assert self.cmd(helo).startswith("250")
        assert self.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK
        assert self.cmd(b"RCPT TO:" + OTHER) == replies.RCPT_OK
        assert self.cmd(b"DATA") == replies.START_DATA


@pytest.fixture(autouse=True)
def close_raw_clients():
    yield
    while Raw.opened:
        Raw.opened.pop().sock.close()


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def serve(loop):
    """serve(**make_server kwargs) -> (port, recorder): a fresh server on a free port."""
    contexts = []

    def start(**kwargs):
        recorder = Recorder()
        handler = GatewayHandler(recorder.decide_rcpt, recorder.accept_data)
        context = running_server(handler, hostname="mx.gov.test", **kwargs)
        server = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(5)
        contexts.append(context)
        return server.port, recorder

    yield start
    for context in contexts:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(5)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(server context, client context) for a self-signed localhost certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cafile=str(directory / "cert.pem"))
    return server, client


# --- the happy path ---------------------------------------------------------------
def test_stores_envelope_and_names_no_version(serve):
    port, rec = serve()
    with smtplib.SMTP("127.0.0.1", port) as client:
        code, banner = client.docmd("NOOP")  # smtplib already read the greeting
        assert (code, client.ehlo("client.test")[0]) == (250, 250)
        client.mail("alice@gov.test")
        client.rcpt("bob@gov.test")
        client.rcpt("carol@gov.test")
        assert client.data(b"Subject: hi\r\n\r\n..dot\r\nend\r\n") == (250, b"2.0.0 OK: queued")
    [env] = rec.stored
    assert (env.mail_from, env.rcpt_tos) == ("alice@gov.test", ("bob@gov.test", "carol@gov.test"))
    assert env.data == b"Subject: hi\r\n\r\n..dot\r\nend\r\n"  # smtplib dot-stuffs, we unstuff
    assert (env.peer_ip, env.tls, env.auth_user) == ("127.0.0.1", False, None)
    assert env.helo == "client.test"
    assert abs(env.received_at - time.time()) < 10
    raw = Raw(port)
    assert raw.reply() == "220 mx.gov.test ESMTP"


def test_null_sender_accepted_null_recipient_refused(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c")
    assert raw.cmd(b"MAIL FROM:<>") == replies.MAIL_OK
    assert raw.cmd(b"RCPT TO:<>") == replies.BAD_RCPT_SYNTAX
    assert raw.cmd(b"RCPT TO:<x@elsewhere.test>") == "554 5.7.1 Relay access denied"
    assert raw.cmd(b"RCPT TO:" + OTHER) == replies.RCPT_OK
    assert raw.cmd(b"DATA") == replies.START_DATA
    assert raw.cmd(b"Subject: bounce\r\n.") == replies.OK
    assert rec.stored[0].mail_from == ""


# --- 1. errors never leak ---------------------------------------------------------
def test_unexpected_error_in_store_is_451_and_logged(serve, caplog):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    with caplog.at_level(logging.ERROR, logger="securemail"):
        reply = raw.cmd(b"X-Test: unexpected\r\n\r\nbody\r\n.")
    assert reply == replies.TEMP_FAILURE == "451 4.3.0 Temporary local problem, try again later"
    assert "disk full at /var/spool/secret" in caplog.text  # the log has the detail
    assert raw.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK  # state was reset
    assert rec.stored == []


def test_unexpected_error_in_decision_is_451(serve):
    port, _ = serve()
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c"), raw.cmd(b"MAIL FROM:" + GOOD)
    assert raw.cmd(b"RCPT TO:<boom@gov.test>") == replies.TEMP_FAILURE


def test_securemail_error_gives_its_reply(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    assert raw.cmd(b"X-Test: policy\r\n\r\nbody\r\n.") == "550 5.7.1 message is not encrypted"
    assert rec.stored == []


def test_malformed_reply_from_store_is_451(serve):
    port, _ = serve()
    raw = Raw(port)
    raw.start_data()
    assert raw.cmd(b"X-Test: malformed\r\n\r\nbody\r\n.") == replies.TEMP_FAILURE
    assert raw.cmd(b"NOOP") == replies.NOOP_OK  # and nothing injected in between


def test_failing_authenticator_is_451(serve, tls):
    port, _ = serve(tls_context=tls[0], auth_required=True, authenticator=lambda u, p: 1 / 0)
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.starttls(context=tls[1])
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login("alice", "pw")
    assert failure.value.smtp_code == 451 and b"ZeroDivision" not in failure.value.smtp_error


# --- 2. bare CR / LF: SMTP smuggling --------------------------------------------
SMUGGLED = (b"MAIL FROM:<evil@gov.test>\r\nRCPT TO:<bob@gov.test>\r\nDATA\r\n"
            b"From: ceo@gov.test\r\n\r\nsmuggled\r\n.\r\n")
FAKE_ENDS = [b"\n.\r\n", b"\n.\n", b"\r.\r", b"\r\n.\r", b"\r\n.\n", b"\n.\r"]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "split-writes"])
def test_smuggling_attempt_is_refused_and_never_split(serve, fake_end, split):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    parts = [b"Subject: one\r\n\r\nbody", fake_end, SMUGGLED + b"QUIT\r\n"]
    for part in parts if split else [b"".join(parts)]:
        try:
            raw.sock.sendall(part)
        except OSError:
            break
        time.sleep(0.05 if split else 0)
    assert raw.reply() == replies.BARE_NEWLINE
    assert replies.BARE_NEWLINE.startswith("521 5.5.2 ")
    assert raw.at_eof()
    assert rec.stored == []


@pytest.mark.parametrize("payload", [
    b"Subject: x\nBcc: y@gov.test\r\n\r\nbody\r\n.\r\n",
    b"Subject: x\r\n\r\nbo\rdy\r\n.\r\n",
    b"Subject: x\r\n\r\nbody\n\r\n.\r\n",
    b"Subject: x\r\n\r\nbody\r\r\n.\r\n",
], ids=["LF-in-header", "CR-in-body", "LF-before-end", "CR-before-CRLF"])
def test_bare_newline_in_message_is_refused(serve, payload):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    raw.sock.sendall(payload)
    assert raw.reply() == replies.BARE_NEWLINE
    assert raw.at_eof() and rec.stored == []


@pytest.mark.parametrize("line", [b"NOOP\n", b"EHLO c\n", b"NOOP\rRSET\r\n", b"\n"], ids=repr)
def test_bare_newline_in_command_is_refused(serve, line):
    port, _ = serve()
    raw = Raw(port)
    raw.reply()
    raw.sock.sendall(line)
    assert raw.reply() == replies.BARE_NEWLINE
    assert raw.at_eof()


def test_crlf_split_across_writes_is_fine(serve):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    for part in [b"Subject: x\r", b"\n\r\nbody\r\n.\r", b"\n"]:
        raw.sock.sendall(part)
        time.sleep(0.05)
    assert raw.reply() == replies.OK
    assert rec.stored[0].data == b"Subject: x\r\n\r\nbody\r\n"


# --- 3. line and size limits ------------------------------------------------------
def test_command_line_limit_is_512_octets(serve):
    port, _ = serve()
    raw = Raw(port)
    raw.reply()
    assert raw.cmd(b"NOOP " + b"x" * 505) == replies.NOOP_OK  # 512 with CRLF
    assert raw.cmd(b"NOOP " + b"x" * 506) == replies.LINE_TOO_LONG == "500 5.5.2 Line too long"
    assert raw.cmd(b"NOOP " + b"x" * 5000) == replies.LINE_TOO_LONG
    assert raw.cmd(b"NOOP") == replies.NOOP_OK
    for _ in range(3):  # aiosmtpd grew the MAIL limit by 26 (SIZE=) on every EHLO
        assert raw.cmd(b"EHLO c").startswith("250-")
    mail = b"MAIL FROM:<%s@gov.test>"
    assert raw.cmd(mail % (b"a" * (536 - len(mail) + 2))) == replies.MAIL_OK
    assert raw.cmd(b"RSET") == replies.NOOP_OK
    assert raw.cmd(mail % (b"a" * (537 - len(mail) + 2))) == replies.LINE_TOO_LONG


@pytest.mark.parametrize("line, stored", [
    (b"a" * 998, b"a" * 998),  # 1000 octets with CRLF
    (b"." + b"." + b"a" * 997, b"." + b"a" * 997),  # dot-stuffed: 1001 on the wire
    (b"a" * 999, None),
    (b"a" * 5000, None),
], ids=["998", "dot-stuffed-998", "999", "5000"])
def test_data_line_limit_is_1000_octets(serve, line, stored):
    port, rec = serve()
    raw = Raw(port)
    raw.start_data()
    reply = raw.cmd(b"Subject: x\r\n\r\n" + line + b"\r\n.")
    if stored is None:
        assert reply == replies.DATA_LINE_TOO_LONG and reply.startswith("550 5.6.0 ")
        assert rec.stored == []
        assert raw.cmd(b"MAIL FROM:" + GOOD) == replies.MAIL_OK  # the session goes on
    else:
        assert reply == replies.OK
        assert rec.stored[0].data == b"Subject: x\r\n\r\n" + stored + b"\r\n"


def test_message_size_limit(serve):
    port, rec = serve(limits=Limits(message_size=1000))
    raw = Raw(port)
    raw.reply()
    assert "250-SIZE 1000" in raw.cmd(b"EHLO c").splitlines()
    assert raw.cmd(b"MAIL FROM:<alice@gov.test> SIZE=1001") == replies.TOO_BIG
    assert replies.TOO_BIG.startswith("552 5.3.4 ")
    assert raw.cmd(b"MAIL FROM:<alice@gov.test> SIZE=1000") == replies.MAIL_OK
    assert raw.cmd(b"RCPT TO:" + OTHER) == replies.RCPT_OK
    assert raw.cmd(b"DATA") == replies.START_DATA
    assert raw.cmd((b"x" * 70 + b"\r\n") * 20 + b".") == replies.TOO_BIG
    assert rec.stored == []


# --- 4. recipients -------------------------------------------------------------------
def test_recipient_limit(serve):
    port, rec = serve(limits=Limits(recipients=2))
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c"), raw.cmd(b"MAIL FROM:" + GOOD)
    assert raw.cmd(b"RCPT TO:<r1@gov.test>") == replies.RCPT_OK
    assert raw.cmd(b"RCPT TO:<r2@gov.test>") == replies.RCPT_OK
    assert raw.cmd(b"RCPT TO:<r3@gov.test>") == "452 4.5.3 Too many recipients"
    assert raw.cmd(b"DATA") == replies.START_DATA
    assert raw.cmd(b"Subject: x\r\n.") == replies.OK
    assert rec.stored[0].rcpt_tos == ("r1@gov.test", "r2@gov.test")


# --- 5. connections ------------------------------------------------------------------
def _refused(port: int, source: str = "127.0.0.1") -> bool:
    raw = Raw(port, source)
    reply = raw.reply()
    if reply == replies.TOO_MANY_CONNECTIONS == "421 4.7.0 Too many connections":
        assert raw.at_eof()
        return True
    assert reply.startswith("220 ")
    return False


def test_connections_per_ip(serve):
    port, _ = serve(limits=Limits(connections_per_ip=2, connections=10))
    first, second = Raw(port), Raw(port)
    assert first.reply().startswith("220") and second.reply().startswith("220")
    assert _refused(port)
    assert not _refused(port, source="127.0.0.2")  # another client is not affected
    first.sock.close()
    deadline = time.monotonic() + 5
    while _refused(port) and time.monotonic() < deadline:  # released on disconnect
        time.sleep(0.05)
    assert time.monotonic() < deadline


def test_connections_total(serve):
    port, _ = serve(limits=Limits(connections_per_ip=10, connections=2))
    held = [Raw(port), Raw(port, source="127.0.0.2")]
    assert all(raw.reply().startswith("220") for raw in held)
    assert _refused(port, source="127.0.0.3")


# --- 6. timeouts -----------------------------------------------------------------------
def test_idle_timeout(serve):
    port, _ = serve(limits=Limits(command_timeout=0.3))
    raw = Raw(port)
    raw.reply()
    started = time.monotonic()
    assert raw.reply() == replies.TIMEOUT and replies.TIMEOUT.startswith("421 4.4.2 ")
    assert raw.at_eof() and time.monotonic() - started < 3


def test_data_time_limit(serve):
    port, rec = serve(limits=Limits(command_timeout=10, data_timeout=0.5))
    raw = Raw(port)
    raw.start_data()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 3:  # a slow drip keeps no idle timer alive
            raw.sock.sendall(b"X-Drip: 1\r\n")
            time.sleep(0.1)
    except OSError:
        pass
    assert raw.reply() == replies.TIMEOUT
    assert raw.at_eof() and rec.stored == []


# --- 7. STARTTLS -------------------------------------------------------------------------
def test_require_starttls(serve, tls):
    port, rec = serve(tls_context=tls[0], require_starttls=True)
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("c")
        assert client.docmd("MAIL FROM:<alice@gov.test>") == (530, replies.NEED_TLS[4:].encode())
        assert client.starttls(context=tls[1])[0] == 220
        client.ehlo("c")
        assert not client.has_extn("auth")  # no authenticator: no empty "AUTH" keyword
        client.sendmail("alice@gov.test", ["bob@gov.test"], b"Subject: x\r\n\r\nsecret\r\n")
    assert rec.stored[0].tls is True


def test_starttls_discards_pipelined_plaintext(serve, tls):
    port, _ = serve(tls_context=tls[0])
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c")
    raw.sock.sendall(b"STARTTLS\r\nRSET\r\n")  # RSET injected before the handshake
    assert raw.reply() == replies.TLS_READY
    assert raw.buf == b""
    raw.sock = tls[1].wrap_socket(raw.sock, server_hostname="localhost")
    raw.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):  # the injected RSET is never answered
        raw.sock.recv(1)
    raw.sock.settimeout(5)
    assert raw.cmd(b"EHLO c").startswith("250-mx.gov.test")


# --- 8. AUTH ------------------------------------------------------------------------------
def test_auth_required(serve, tls):
    port, rec = serve(tls_context=tls[0], auth_required=True,
                      authenticator=lambda user, password: (user, password) == ("alice", b"s3cret"))
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c")
    plain = base64.b64encode(b"\0alice\0s3cret")
    assert raw.cmd(b"AUTH PLAIN " + plain).startswith("538 5.7.11 ")  # never in clear
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.starttls(context=tls[1])
        client.ehlo("c")
        assert client.docmd("MAIL FROM:<alice@gov.test>") == (530, replies.NEED_AUTH[4:].encode())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login("alice", "wrong")
        assert failure.value.smtp_code == 535
        assert client.login("alice", "s3cret")[0] == 235  # PLAIN
        client.sendmail("alice@gov.test", ["bob@gov.test"], b"Subject: x\r\n\r\nhi\r\n")
    assert rec.stored[0].auth_user == "alice"
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.starttls(context=tls[1])
        client.ehlo("c")
        client.user, client.password = "alice", "s3cret"
        assert client.auth("LOGIN", client.auth_login)[0] == 235


# --- 9. bad bytes in commands ----------------------------------------------------------------
@pytest.mark.parametrize("command, reply", [
    (b"MAIL FROM:<a\0b@gov.test>", replies.BAD_SENDER_SYNTAX),
    ("MAIL FROM:<jos\u00e9@gov.test>".encode(), replies.BAD_SENDER_SYNTAX),
    (b"RCPT TO:<a\0b@gov.test>", replies.BAD_RCPT_SYNTAX),
    ("RCPT TO:<jos\u00e9@gov.test>".encode(), replies.BAD_RCPT_SYNTAX),
    (b"HELO a\0b", replies.BAD_CHARACTERS),
    (b"MAIL FROM:<@relay.example:a@gov.test>", replies.BAD_SENDER_SYNTAX),
    (b"RCPT TO:<@gw.gov.test:u@elsewhere.example>", replies.BAD_RCPT_SYNTAX),
], ids=["mail-NUL", "mail-8bit", "rcpt-NUL", "rcpt-8bit", "helo-NUL", "mail-route", "rcpt-route"])
def test_bad_bytes_in_commands(serve, command, reply):
    port, _ = serve()
    raw = Raw(port)
    raw.reply(), raw.cmd(b"EHLO c")
    if command.startswith(b"RCPT"):
        raw.cmd(b"MAIL FROM:" + GOOD)
    assert raw.cmd(command) == reply
    assert reply.split()[:2] in (["501", "5.1.7"], ["501", "5.1.3"], ["501", "5.5.2"])


# --- 11. configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(require_starttls=True), dict(auth_required=True)])
def test_settings_that_would_silently_weaken_are_refused(kwargs):
    with pytest.raises(ConfigError):
        make_server(object(), "127.0.0.1", 0, **kwargs)
