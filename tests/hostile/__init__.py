"""Hostile input against the real gateway: a raw SMTP client, and what no reply may ever say.

``Raw`` speaks SMTP byte by byte (so it can send what smtplib never would) and
checks every reply it reads with ``assert_no_leak``: no path, stack trace, SQL,
exception class name or version string ever reaches a client.
"""

from __future__ import annotations

import builtins
import platform
import re
import socket
import ssl

import aiosmtpd
import dkim
import pgpy
import sqlalchemy

import securemail
from securemail import errors
from securemail.crypto import keys as _keys
from securemail.federation import ManifestInvalid, ManifestRefused
from securemail.smtp.server import CommandRefused

OWN, JUSTICE = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
GATEWAY_PEER, STRANGER, OFFICE = "127.0.0.1", "127.0.0.2", "127.0.0.3"

_REPLY_END = re.compile(rb"(^|\r\n)\d{3} [^\r\n]*\r\n")


def _exception_names() -> set[str]:
    names = {n for n, o in vars(builtins).items()
             if isinstance(o, type) and issubclass(o, BaseException) and not issubclass(o, Warning)}
    for module in (errors, ssl, socket, _keys):
        names |= {n for n, o in vars(module).items() if isinstance(o, type) and issubclass(o, BaseException)}
    return names | {c.__name__ for c in (ManifestInvalid, ManifestRefused, CommandRefused)}


EXCEPTION_NAMES = frozenset(_exception_names())
VERSIONS = frozenset(v for v in (securemail.__version__, platform.python_version(),
                                 aiosmtpd.__version__, getattr(dkim, "__version__", ""),
                                 getattr(pgpy, "__version__", ""), sqlalchemy.__version__) if v)
_LEAKS = [
    ("a path", re.compile(r"(?<![\w<>.])/(?:[\w.@+-]+/)+[\w.@+-]*|[A-Za-z]:\\|\.py\b")),
    ("a stack trace", re.compile(r"Traceback|File \"|line \d+, in ")),
    ("SQL", re.compile(r"(?i:sqlite|psycopg|sqlalchemy|postgres)|\bSELECT\b|\bINSERT INTO\b|\bWHERE\b")),
    ("an exception name", re.compile(r"\b\w+(?:Error|Exception)\b")),
    ("a version string", re.compile(r"(?i)\b(?:python|aiosmtpd|pgpy|sqlalchemy|dkimpy|securemail|openssl"
                                    r"|cpython|postfix)[ /-]?v?\d")),
]


def assert_no_leak(reply: str) -> None:
    """Fail when an SMTP reply says anything about the gateway's insides."""
    for what, pattern in _LEAKS:
        m = pattern.search(reply)
        assert m is None, f"reply leaks {what} ({m.group(0)!r}): {reply!r}"
    words = set(re.findall(r"[A-Za-z_]\w*", reply))
    assert not words & EXCEPTION_NAMES, f"reply names an exception {words & EXCEPTION_NAMES}: {reply!r}"
    for v in VERSIONS:
        assert not re.search(rf"(?<![\d.]){re.escape(v)}(?![\d.])", reply), f"reply has version {v}: {reply!r}"


def crlf(data: bytes) -> bytes:
    """Every line ending as CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def client_tls(cert=None) -> ssl.SSLContext:
    """The attacker's TLS: no certificate check (the gateway's certificate is self-signed);
    ``cert``: a (certificate, key) pair shown as client certificate, as a member gateway does."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*(str(p) for p in cert))
    return ctx


class Raw:
    """A raw-socket SMTP client that can send anything; every reply it reads is leak-checked."""

    def __init__(self, port: int, source: str = OFFICE, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.replies: list[str] = []

    def reply(self) -> str:
        """The next complete reply, lines joined by newlines; "" at EOF."""
        while not _REPLY_END.search(self.buf):
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                return ""
            self.buf += data
        end = _REPLY_END.search(self.buf).end()
        raw, self.buf = self.buf[:end], self.buf[end:]
        text = raw.decode("ascii", "replace").rstrip("\r\n").replace("\r\n", "\n")
        assert_no_leak(text)
        self.replies.append(text)
        return text

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: bytes) -> str:
        self.send(line + b"\r\n")
        return self.reply()

    def greet(self, helo: bytes = b"EHLO gw.justice.gouv.fr", *, tls: bool = False, cert=None) -> str:
        """Greeting, EHLO, optionally STARTTLS (showing ``cert``, see client_tls) and EHLO again;
        the last EHLO reply."""
        banner = self.reply()
        assert banner.startswith("220 "), banner
        ehlo = self.cmd(helo)
        assert ehlo.startswith("250"), ehlo
        if tls:
            self.starttls(cert)
            ehlo = self.cmd(helo)
            assert ehlo.startswith("250"), ehlo
        return ehlo

    def starttls(self, cert=None) -> None:
        assert self.cmd(b"STARTTLS") == "220 2.0.0 Ready to start TLS"
        self.wrap_tls(cert)

    def wrap_tls(self, cert=None) -> None:
        """TLS on the socket; ``cert``: the (certificate, key) shown, as a member gateway shows its own."""
        assert self.buf == b"", f"bytes after the STARTTLS reply: {self.buf!r}"
        self.sock = client_tls(cert).wrap_socket(self.sock, server_hostname="gateway")

    def envelope(self, sender: str, rcpts: list[str]) -> None:
        """MAIL, RCPT... and DATA, each expected to succeed."""
        assert self.cmd(f"MAIL FROM:<{sender}>".encode()) == "250 2.1.0 Sender OK"
        for r in rcpts:
            assert self.cmd(f"RCPT TO:<{r}>".encode()) == "250 2.1.5 Recipient OK"
        assert self.cmd(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"

    def at_eof(self, wait: float = 5.0) -> bool:
        """True when the server has closed the connection (and sent nothing more)."""
        self.sock.settimeout(wait)
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
