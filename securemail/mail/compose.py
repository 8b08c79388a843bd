"""Writing mail: the inner MIME entity with protected headers, and its PGP/MIME wrapper (RFC 3156, RFC 9788).

The inner entity carries the real From, To, Cc, Subject, Date and Message-ID
(header protection, ``hp="cipher"``), the text body and attachments. It is
signed and encrypted as binary literal data, so its CRLFs survive byte for byte.
The outer message shows only what transport needs (``crossing.CLEAR_HEADERS``); its Subject is
``...``. ``pgp_mime`` and ``pgp_inline`` are the only skeletons that cross to a member: an empty
preamble and epilogue, fixed part headers, and the armored message.
"""

from __future__ import annotations

import io
import mimetypes
import os
import secrets
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..errors import UsageError
from .crossing import COPIED, HIDDEN_SUBJECT, well_formed

PROTECTED = ("From", "To", "Cc", "Subject", "Date", "Message-ID")


@dataclass
class Draft:
    sender: str
    to: list[str]
    subject: str
    body: str
    cc: list[str] = field(default_factory=list)
    attachments: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, content)
    date: str | None = None
    message_id: str | None = None

    def headers(self) -> dict[str, str]:
        for value in [self.sender, self.subject, *self.to, *self.cc]:
            if "\r" in value or "\n" in value:
                raise UsageError("header values may not contain line breaks")
        domain = self.sender.rpartition("@")[2] or "localhost"
        h = {"From": self.sender, "To": ", ".join(self.to)}
        if self.cc:
            h["Cc"] = ", ".join(self.cc)
        h["Subject"] = self.subject
        h["Date"] = self.date or formatdate(localtime=False, usegmt=True)
        h["Message-ID"] = self.message_id or make_msgid(domain=domain)
        return h


def inner_entity(draft: Draft, headers: dict[str, str]) -> bytes:
    """The cryptographic payload: a MIME entity with the protected headers, CRLF line ends."""
    msg = EmailMessage(policy=policy.SMTP)
    for name in PROTECTED:
        if name in headers:
            msg[name] = headers[name]
    msg.set_content(draft.body)
    for name, content in draft.attachments:
        ctype, _ = mimetypes.guess_type(name)
        maintype, subtype = (ctype or "application/octet-stream").split("/", 1)
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    msg.set_param("hp", "cipher")
    return msg.as_bytes(policy=policy.SMTP)


def pgp_mime(headers: dict[str, str], armored: bytes) -> bytes:
    """The outer multipart/encrypted message around one armored OpenPGP message (RFC 3156): the
    fields of ``crossing.CLEAR_HEADERS`` only, no preamble, no epilogue."""
    boundary = "securemail-" + secrets.token_hex(12)
    outer = _outer(headers) + [
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
        f' boundary="{boundary}"', "",
        f"--{boundary}", "Content-Type: application/pgp-encrypted",
        "Content-Description: PGP/MIME version identification", "", "Version: 1", "",
        f"--{boundary}", 'Content-Type: application/octet-stream; name="encrypted.asc"',
        "Content-Description: OpenPGP encrypted message",
        'Content-Disposition: inline; filename="encrypted.asc"', ""]
    out = io.BytesIO()  # getvalue() hands its buffer over: the armored text is copied once
    out.write(("\r\n".join(outer) + "\r\n").encode())
    _write_crlf(out, armored)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue()


def pgp_inline(headers: dict[str, str], armored: bytes) -> bytes:
    """An inline PGP message: the fields of ``crossing.CLEAR_HEADERS`` and the armored block alone."""
    out = io.BytesIO()
    out.write(("\r\n".join(_outer(headers) + ['Content-Type: text/plain; charset="us-ascii"', ""])
               + "\r\n").encode())
    _write_crlf(out, armored)
    out.write(b"\r\n")
    return out.getvalue()


def _outer(headers: dict[str, str]) -> list[str]:
    """The outer header lines before Content-Type, in the order of the list; a Date or Message-ID
    that is not of its kind is replaced by the gateway's own (never copied as it is)."""
    values = {n: headers[n] for n in COPIED if n in headers}
    if "Date" in values and not well_formed("date", values["Date"]):
        values["Date"] = formatdate(usegmt=True)
    if "Message-ID" in values and not well_formed("message-id", values["Message-ID"]):
        domain = values.get("From", "").rpartition("@")[2].strip(" >") or "localhost"
        values["Message-ID"] = make_msgid(domain=domain)
    lines = [_header(name, values[name]) for name in COPIED if name in values]
    return lines + [f"Subject: {HIDDEN_SUBJECT}", "MIME-Version: 1.0"]


_BLOCK = 1 << 20


def _write_crlf(out: io.BytesIO, text: bytes) -> None:
    """``text`` (LF or CRLF line ends; trailing ones dropped) with CRLF line ends, into ``out``.

    A block of about 1 MiB at a time, cut after an LF: no second copy of the
    whole text and no object per line (an armored 25 MB message has 530,000).
    """
    end = len(text)
    while end and text[end - 1] in b"\r\n":
        end -= 1
    start = 0
    while start < end:
        stop = end if end - start <= _BLOCK else text.rfind(b"\n", start, start + _BLOCK) + 1
        if stop <= start:  # no LF in the block: cut anywhere but inside a CRLF
            stop = start + _BLOCK - (text[start + _BLOCK - 1] == 0x0D)
        out.write(text[start:stop].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        start = stop


def _header(name: str, value: str) -> str:
    """One header field, folded at 78 columns; ASCII values as they are, others RFC 2047-encoded."""
    if value.isascii() and "\r" not in value and "\n" not in value:
        return _fold(f"{name}: {value}")
    msg = EmailMessage(policy=policy.SMTP)
    msg[name] = value
    return msg.as_string().split("\r\n\r\n", 1)[0].rstrip("\r\n")


def _fold(line: str, width: int = 78) -> str:
    if len(line) <= width:
        return line
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)


def read_attachment(path: str, max_size: int = 50 << 20) -> tuple[str, bytes]:
    try:
        size = os.path.getsize(path)
        if size > max_size:
            raise UsageError(f"attachment {path} is larger than {max_size >> 20} MiB")
        with open(path, "rb") as f:
            return os.path.basename(path), f.read()
    except OSError as e:
        raise UsageError(f"cannot read attachment {path}: {e.strerror}") from None
