"""Mail shapes for the interop tests, built by hand so no securemail code makes what it reads.

``inner_entity`` is the MIME entity a peer signs and encrypts (RFC 9788 protected
headers, CRLF line ends, a text body and one binary attachment); ``wrap_pgp_mime``
puts an armored OpenPGP message into an RFC 3156 multipart/encrypted message;
``encrypted_part`` takes it out of one again, checking the RFC 3156 shape.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesParser

# NUL, bare CR, CRLF, a lone "." line and bytes that are not UTF-8: survives only as binary.
ATTACHMENT = (b"%PDF-1.4\r\n\x00\x01\xff\xfe\r\n.\r\nFrom the start\r\n\rbare CR\n" * 40)[:1500]


@dataclass(frozen=True)
class Content:
    """What a message says: the protected headers, the body text and one attachment."""
    sender: str
    to: str
    subject: str
    body: str
    attachment: tuple[str, bytes]


def inner_entity(c: Content) -> bytes:
    """multipart/mixed with hp="cipher", an 8bit UTF-8 text body and a base64 attachment; CRLF."""
    boundary = "inner-" + secrets.token_hex(8)
    name, data = c.attachment
    b64 = base64.encodebytes(data).decode().rstrip("\n").split("\n")
    lines = [f"From: {c.sender}", f"To: {c.to}",
             f"Subject: {Header(c.subject, 'utf-8').encode(linesep=chr(13) + chr(10))}",
             "Date: Tue, 01 Apr 2025 09:00:00 +0000",
             f"Message-ID: <{secrets.token_hex(8)}@interop.example>", "MIME-Version: 1.0",
             f'Content-Type: multipart/mixed; boundary="{boundary}"; hp="cipher"', "",
             f"--{boundary}", "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit", "", *c.body.rstrip("\n").split("\n"),
             f"--{boundary}", f'Content-Type: application/octet-stream; name="{name}"',
             f'Content-Disposition: attachment; filename="{name}"',
             "Content-Transfer-Encoding: base64", "", *b64, f"--{boundary}--", ""]
    return "\r\n".join(lines).encode()


def wrap_pgp_mime(sender: str, to: str, armored: bytes) -> bytes:
    """RFC 3156 multipart/encrypted around ``armored``; the outer Subject hides the real one."""
    boundary = "outer-" + secrets.token_hex(8)
    head = [f"From: {sender}", f"To: {to}", "Subject: ...", "MIME-Version: 1.0",
            f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
            f'boundary="{boundary}"', "", "This is an OpenPGP/MIME encrypted message.",
            f"--{boundary}", "Content-Type: application/pgp-encrypted", "", "Version: 1", "",
            f"--{boundary}", 'Content-Type: application/octet-stream; name="encrypted.asc"',
            'Content-Disposition: inline; filename="encrypted.asc"', ""]
    body = armored.replace(b"\r\n", b"\n").strip().split(b"\n")
    return ("\r\n".join(head) + "\r\n").encode() + b"\r\n".join(body) + \
        f"\r\n\r\n--{boundary}--\r\n".encode()


def encrypted_part(eml: bytes) -> tuple[EmailMessage, bytes]:
    """The outer message and its armored OpenPGP message; AssertionError unless RFC 3156 shaped."""
    msg = BytesParser(policy=policy.default).parsebytes(eml)
    assert msg.get_content_type() == "multipart/encrypted", msg.get_content_type()
    assert msg.get_param("protocol") == "application/pgp-encrypted"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pgp-encrypted",
                                                     "application/octet-stream"]
    assert b"Version: 1" in parts[0].get_payload(decode=True)
    armored = parts[1].get_payload(decode=True)
    assert armored.lstrip().startswith(b"-----BEGIN PGP MESSAGE-----"), armored[:60]
    return msg, armored


def parse_entity(data: bytes) -> tuple[EmailMessage, str, list[tuple[str, bytes]]]:
    """An inner entity as (message, body text, [(attachment name, content)])."""
    msg = BytesParser(policy=policy.default).parsebytes(data)
    body = msg.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    files = [(a.get_filename(), a.get_payload(decode=True)) for a in msg.iter_attachments()]
    return msg, text, files
