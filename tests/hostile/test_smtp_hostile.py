"""Hostile SMTP against the real gateway: smuggling, injection, relay tricks, every limit.

Each case sends raw bytes to a running gateway (see conftest: A with default
limits, J with small ones), asserts the exact reply and that the queue did not
change, and records the reply in the proof table. The adapter's own tests
(tests/integration/test_smtp_adapter.py) check the same rules against a
recording store; these check that the assembled gateway keeps them.
"""

from __future__ import annotations

import base64
import socket
import time

import pytest

from tests.support import queue_rows

from . import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, STRANGER
from .conftest import PASSWORD

pytestmark = pytest.mark.timeout(120)

BARE_NEWLINE = "521 5.5.2 Bare <CR> or <LF> received, lines must end with <CR><LF>"
LINE_TOO_LONG = "500 5.5.2 Line too long"
DATA_LINE_TOO_LONG = "550 5.6.0 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
RELAY_DENIED = "554 5.7.1 Relay access denied"
BAD_RCPT = "501 5.1.3 Bad recipient address syntax"
BAD_SENDER = "501 5.1.7 Bad sender address syntax"
NEED_TLS = "530 5.7.0 Must issue a STARTTLS command first"

SIDES = {"office": (OFFICE, False, ALICE, BRUNO), "member-gateway": (GATEWAY_PEER, True, BRUNO, ALICE)}


def session(gw, raw, side: str, port: int | None = None):
    """A raw session up to the 354 of DATA, as the office or as justice's gateway (TLS)."""
    source, tls, sender, rcpt = SIDES[side]
    client = raw(port or gw.a.relay, source)
    client.greet(tls=tls, cert=gw.j.client_cert if tls else None)  # justice's gateway shows its own
    client.envelope(sender, [rcpt])
    return client, sender, rcpt


def assert_silent(client, seconds: float = 0.5) -> None:
    """Nothing arrives from the server for ``seconds`` (an injected command was not answered)."""
    client.sock.settimeout(seconds)
    with pytest.raises(socket.timeout):
        client.sock.recv(1)
    client.sock.settimeout(30)


# --- 1. SMTP smuggling: every published fake end-of-data ------------------------------------
FAKE_ENDS = {"<LF>.<CR><LF>": b"\n.\r\n", "<LF>.<LF>": b"\n.\n", "<CR>.<CR>": b"\r.\r",
             "<CR><LF>.<LF>": b"\r\n.\n", "<LF>.<CR>": b"\n.\r", "<CR>.<LF>": b"\r.\n",
             "<CR><LF>.<CR>": b"\r\n.\r", "<CR>.<CR><LF>": b"\r.\r\n"}


def smuggled(sender: str, rcpt: str) -> bytes:
    return (f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\nFrom: <{sender}>\r\n"
            f"To: <{rcpt}>\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n").encode()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAKE_ENDS)
def test_smuggling_is_refused_and_never_split(gw, raw, record, side, name):
    before = gw.queued()
    client, sender, rcpt = session(gw, raw, side)
    first = f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: one\r\n\r\nbody".encode()
    client.send(first + FAKE_ENDS[name] + smuggled(sender, rcpt))
    reply = client.reply()
    record(f"SMTP smuggling {name} ({side})", reply)
    assert reply == BARE_NEWLINE
    assert client.at_eof(), "the connection stays open after a bare newline"
    assert client.replies[-1] == BARE_NEWLINE, "a smuggled command was answered"
    assert gw.queued() == before


def test_smuggling_with_nul_before_the_dot_stays_one_message(gw, raw, record):
    """<CR><LF><NUL>.<CR><LF> is no end of data: everything up to the real end is one message."""
    before = gw.queued()
    client, sender, rcpt = session(gw, raw, "office")
    head = f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: one\r\n\r\nbody\r\n\x00.\r\n".encode()
    client.send(head + smuggled(sender, rcpt))
    reply = client.reply()
    record("SMTP smuggling <CR><LF><NUL>.<CR><LF> (office)", reply)
    assert client.reply() == "221 2.0.0 Bye"
    added = gw.queued() - before
    assert len(added) <= 1, f"split into {len(added)} messages"
    assert reply.startswith("250 2.0.0 OK: queued as ") == (len(added) == 1), reply


# --- 2. bare CR or LF in the header section ----------------------------------------------
BARE_IN_HEADERS = {"bare LF in header": b"Subject: x\nBcc: <ceo@justice.gouv.fr>\r\n\r\nbody\r\n.\r\n",
                   "bare CR in header": b"Subject: x\rBcc: <ceo@justice.gouv.fr>\r\n\r\nbody\r\n.\r\n",
                   "bare LF folding": b"Subject: x\n y\r\n\r\nbody\r\n.\r\n"}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", BARE_IN_HEADERS)
def test_bare_newline_in_headers_is_refused(gw, raw, record, side, name):
    before = gw.queued()
    client, sender, rcpt = session(gw, raw, side)
    client.send(f"From: <{sender}>\r\nTo: <{rcpt}>\r\n".encode() + BARE_IN_HEADERS[name])
    reply = client.reply()
    record(f"{name} ({side})", reply)
    assert reply == BARE_NEWLINE
    assert client.at_eof()
    assert gw.queued() == before


# --- 3. STARTTLS: injected commands, and TLS where it is required ---------------------------
def _auth_plain() -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()


# What is injected before the handshake, and the command after it whose reply proves it was dropped.
INJECTED = {"relay": (f"MAIL FROM:<{BRUNO}>\r\n", f"RCPT TO:<{ALICE}>", "503 5.5.1 Error: need MAIL command"),
            "submission": (f"{_auth_plain()}\r\nMAIL FROM:<{ALICE}>\r\n", f"MAIL FROM:<{ALICE}>",
                           "530 5.7.0 Authentication required")}


@pytest.mark.parametrize("listener", INJECTED)
def test_commands_pipelined_with_starttls_are_discarded(gw, raw, record, listener):
    port = gw.a.relay if listener == "relay" else gw.a.submission
    injected, probe, expected = INJECTED[listener]
    client = raw(port, GATEWAY_PEER)
    client.greet()
    client.send(b"STARTTLS\r\n" + injected.encode())
    reply = client.reply()
    record(f"commands pipelined after STARTTLS ({listener})", reply)
    assert reply == "220 2.0.0 Ready to start TLS"
    client.wrap_tls()  # asserts nothing followed the 220 in clear
    assert_silent(client)  # nor inside TLS: the injected commands were never read
    assert client.cmd(b"EHLO gw.justice.gouv.fr").startswith("250-")
    reply = client.cmd(probe.encode())
    record(f"{probe.split()[0]} after STARTTLS injection ({listener})", reply)
    assert reply == expected


@pytest.mark.parametrize("command", [f"MAIL FROM:<{ALICE}>", "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                                     f"RCPT TO:<{BRUNO}>", "DATA"])
def test_submission_before_starttls_is_refused(gw, raw, record, command):
    client = raw(gw.a.submission, GATEWAY_PEER)
    client.greet(b"EHLO laptop.example.org")
    reply = client.cmd(command.encode())
    record(f"submission: {command.split()[0]} before STARTTLS", reply)
    assert reply == NEED_TLS


# --- 4. relay attempts ------------------------------------------------------------------------
RELAY = [  # (who, recipient path as sent, exact reply)
    ("stranger", "ext@other.example.org", RELAY_DENIED),
    ("stranger", BRUNO, RELAY_DENIED),
    ("member-gateway", "ext@other.example.org", RELAY_DENIED),
    ("member-gateway", "carole@justice.gouv.fr", RELAY_DENIED),
    ("office", "ext@other.example.org",
     "550 5.7.1 Recipient domain is not a federation member; plain delivery refused by policy"),
]
MALFORMED = "553 5.1.3 Error: malformed address"  # aiosmtpd's own address parser refuses first
TRICKS = {"u%ext.example.org@interieur.gouv.fr": BAD_RCPT,               # percent hack
          "@gw.interieur.gouv.fr:u@ext.example.org": BAD_RCPT,           # source route
          '"u@ext.example.org"@interieur.gouv.fr': BAD_RCPT,             # quoted local part
          "ext.example.org!u@interieur.gouv.fr": BAD_RCPT,               # bang path
          "u@[192.0.2.1]": BAD_RCPT,                                     # address literal
          "u@ext.example.org@interieur.gouv.fr": MALFORMED,
          "alice@interieur.gouv.fr.": MALFORMED,
          "alice@interieur.gouv.fr,ext@other.example.org":
              "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]",
          '"alice"@interieur.gouv.fr': "250 2.1.5 Recipient OK"}         # the same mailbox as alice@
RELAY += [(who, path, reply) for path, reply in TRICKS.items() for who in ("stranger", "member-gateway", "office")]
_WHO = {"stranger": (STRANGER, False), "member-gateway": (GATEWAY_PEER, True), "office": (OFFICE, False)}


@pytest.mark.parametrize("who, path, expected", RELAY, ids=[f"{w}:{p}" for w, p, _ in RELAY])
def test_relay_attempts_are_refused(gw, raw, record, who, path, expected):
    source, tls = _WHO[who]
    client = raw(gw.a.relay, source)
    client.greet(tls=tls, cert=gw.j.client_cert if who == "member-gateway" else None)
    assert client.cmd(b"MAIL FROM:<x@other.example.org>") == "250 2.1.0 Sender OK"
    reply = client.cmd(f"RCPT TO:<{path}>".encode())
    record(f"relay attempt RCPT TO:<{path}> ({who})", reply)
    assert reply == expected
    if not expected.startswith("250"):
        assert client.cmd(b"DATA") == "503 5.5.1 Error: need RCPT command"


# --- 5. line and command length -----------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("length", [1001, 5000, 200_000])
def test_data_line_over_1000_octets_is_refused(gw, raw, record, side, length):
    before = gw.queued()
    client, sender, rcpt = session(gw, raw, side)
    line = b"a" * (length - 2)  # with its CRLF: ``length`` octets
    client.send(f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: long\r\n\r\n".encode() + line + b"\r\n.\r\n")
    reply = client.reply()
    record(f"DATA line of {length} octets ({side})", reply)
    assert reply == DATA_LINE_TOO_LONG
    assert gw.queued() == before
    assert client.cmd(b"RSET") == "250 2.0.0 OK"  # the session goes on


@pytest.mark.parametrize("command", [b"NOOP " + b"x" * 506, b"MAIL FROM:<" + b"a" * 600 + b"@interieur.gouv.fr>",
                                     b"EHLO " + b"h" * 2000, b"NOOP " + b"x" * (1 << 20)],
                         ids=["NOOP-513", "MAIL-630", "EHLO-2005", "NOOP-1MiB"])
def test_command_over_512_octets_is_refused(gw, raw, record, command):
    client = raw(gw.a.relay, OFFICE)
    client.greet()
    reply = client.cmd(command)
    record(f"command line of {len(command) + 2} octets ({command[:4].decode()})", reply)
    assert reply == LINE_TOO_LONG
    assert client.cmd(b"NOOP") == "250 2.0.0 OK"


# --- 6. NUL, control and 8-bit bytes in the envelope -----------------------------------------------
ENVELOPE_BYTES = {
    "MAIL with NUL": (b"MAIL FROM:<alice\x00@interieur.gouv.fr>", BAD_SENDER),
    "MAIL with 8-bit": ("MAIL FROM:<jos\u00e9@interieur.gouv.fr>".encode(), BAD_SENDER),
    "MAIL with DEL": (b"MAIL FROM:<alice\x7f@interieur.gouv.fr>", BAD_SENDER),
    "RCPT with NUL": (b"RCPT TO:<alice\x00@interieur.gouv.fr>", BAD_RCPT),
    "RCPT with 8-bit": ("RCPT TO:<alice@int\u00e9rieur.gouv.fr>".encode(), BAD_RCPT),
    "RCPT with latin-1": (b"RCPT TO:<alic\xe9@interieur.gouv.fr>", BAD_RCPT),
    "RCPT with ESC": (b"RCPT TO:<alice\x1b[2J@interieur.gouv.fr>", BAD_RCPT),
    "EHLO with NUL": (b"EHLO gw\x00.justice.gouv.fr", "501 5.5.2 Control or 8-bit characters not allowed in commands"),
    "EHLO with 8-bit": ("EHLO gw.justice.gouv.fr\u00e9".encode(),
                        "501 5.5.2 Control or 8-bit characters not allowed in commands"),
    "MAIL with SMTPUTF8": (b"MAIL FROM:<alice@interieur.gouv.fr> SMTPUTF8", "501 5.5.4 Error: SMTPUTF8 disabled"),
    "MAIL with BODY=BINARYMIME": (b"MAIL FROM:<alice@interieur.gouv.fr> BODY=BINARYMIME",
                                  "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
}


@pytest.mark.parametrize("name", ENVELOPE_BYTES)
def test_nul_and_8bit_in_the_envelope_are_refused(gw, raw, record, name):
    line, expected = ENVELOPE_BYTES[name]
    client = raw(gw.a.relay, OFFICE)
    client.greet()
    if line.startswith(b"RCPT"):
        assert client.cmd(f"MAIL FROM:<{ALICE}>".encode()) == "250 2.1.0 Sender OK"
    reply = client.cmd(line)
    record(f"{name} in the envelope", reply)
    assert reply == expected
    assert client.cmd(b"NOOP") == "250 2.0.0 OK"


# --- 7. SIZE and DATA over the limit (J: message_size = 100000) -----------------------------------
def test_size_over_the_limit_is_refused_at_mail(gw, raw, record):
    client = raw(gw.j.relay, OFFICE)
    ehlo = client.greet(b"EHLO office.justice.gouv.fr")
    assert "250-SIZE 100000" in ehlo.split("\n")
    reply = client.cmd(f"MAIL FROM:<{BRUNO}> SIZE=100001".encode())
    record("MAIL SIZE= over the limit", reply)
    assert reply == TOO_BIG
    reply = client.cmd(f"MAIL FROM:<{BRUNO}> SIZE=99999999999999999999999".encode())
    record("MAIL SIZE= absurdly large", reply)
    assert reply == TOO_BIG
    assert client.cmd(f"MAIL FROM:<{BRUNO}> SIZE=100000".encode()) == "250 2.1.0 Sender OK"


def test_data_over_the_limit_is_refused_and_nothing_stored(gw, raw, record):
    before = gw.queued(gw.j)
    client = raw(gw.j.relay, OFFICE)
    client.greet(b"EHLO office.justice.gouv.fr")
    client.envelope(BRUNO, ["carole@justice.gouv.fr"])
    client.send(f"From: <{BRUNO}>\r\nTo: <carole@justice.gouv.fr>\r\n\r\n".encode()
                + (b"x" * 98 + b"\r\n") * 1500 + b".\r\n")  # 150 KB
    reply = client.reply()
    record("DATA over the message size limit", reply)
    assert reply == TOO_BIG
    assert gw.queued(gw.j) == before
    assert client.cmd(b"RSET") == "250 2.0.0 OK"


# --- 8. recipients (J: recipients = 3) -------------------------------------------------------------
def test_recipients_over_the_limit_get_452(gw, raw, record):
    before = gw.queued(gw.j)
    client = raw(gw.j.relay, OFFICE)
    client.greet(b"EHLO office.justice.gouv.fr")
    assert client.cmd(f"MAIL FROM:<{BRUNO}>".encode()) == "250 2.1.0 Sender OK"
    rcpts = [f"u{i}@justice.gouv.fr" for i in range(1, 6)]
    replies = [client.cmd(f"RCPT TO:<{r}>".encode()) for r in rcpts]
    record("fourth recipient over a limit of 3", replies[3])
    assert replies == ["250 2.1.5 Recipient OK"] * 3 + ["452 4.5.3 Too many recipients"] * 2
    assert client.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
    reply = client.cmd(f"From: <{BRUNO}>\r\nTo: <u1@justice.gouv.fr>\r\nSubject: x\r\n\r\nhi\r\n.".encode())
    assert reply.startswith("250 2.0.0 OK: queued as "), reply
    added = gw.queued(gw.j) - before
    assert reply.rsplit(" ", 1)[1].split("+")[0] in added  # one queue item per local recipient
    assert sorted(r["recipient"] for r in queue_rows(gw.j.home) if r["message_id"] in added
                  and r["recipient"] in rcpts) == rcpts[:3]


# --- 9. connections from one address (J: connections_per_ip = 3) ----------------------------------
def test_too_many_connections_from_one_address(gw, raw, record):
    held = [raw(gw.j.relay, OFFICE) for _ in range(3)]
    assert all(c.reply() == f"220 gw.{JUSTICE} ESMTP" for c in held)
    extra = raw(gw.j.relay, OFFICE)
    reply = extra.reply()
    record("fourth connection from one address (limit 3)", reply)
    assert reply == "421 4.7.0 Too many connections"
    assert extra.at_eof()
    other = raw(gw.j.relay, STRANGER)  # another address is not affected
    assert other.reply() == f"220 gw.{JUSTICE} ESMTP"
    held[0].cmd(b"QUIT")
    held[0].close()
    deadline = time.monotonic() + 5
    while True:  # the slot is released when the connection goes
        again = raw(gw.j.relay, OFFICE)
        if again.reply().startswith("220 ") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.replies[-1] == f"220 gw.{JUSTICE} ESMTP"


# --- 10. idle and slow clients (J: command_timeout = 2) ----------------------------------------------
def test_idle_client_is_disconnected(gw, raw, record):
    client = raw(gw.j.relay, OFFICE)
    client.greet(b"EHLO office.justice.gouv.fr")
    started = time.monotonic()
    reply = client.reply()
    waited = time.monotonic() - started
    record("idle client (command_timeout = 2 s)", reply)
    assert reply == "421 4.4.2 Timeout exceeded, closing connection"
    assert client.at_eof()
    assert 1.5 < waited < 6, waited


def test_slow_client_dripping_a_command_is_disconnected(gw, raw, record):
    """One byte every 0.3 s never completes a line: the idle timer is not reset by bytes."""
    client = raw(gw.j.relay, OFFICE)
    client.greet(b"EHLO office.justice.gouv.fr")
    started = time.monotonic()
    try:
        for byte in b"NOOP " + b"x" * 40:
            client.send(bytes([byte]))
            time.sleep(0.3)
            if time.monotonic() - started > 8:
                break
    except OSError:
        pass  # closed under us: what we expect
    reply = client.reply()
    record("slow client dripping one byte every 0.3 s (command_timeout = 2 s)", reply)
    assert reply == "421 4.4.2 Timeout exceeded, closing connection"
    assert time.monotonic() - started < 8
