"""Delivery status notifications (bounces): RFC 3464 reports built from a message's headers only.

A DSN is ``multipart/report; report-type=delivery-status`` (RFC 6522) with a
human-readable part, a ``message/delivery-status`` part and the original
*headers* as ``text/rfc822-headers`` -- never the body, which may be plaintext
the sender's gateway encrypted for someone else. ``Diagnostic-Code`` appears
only when a remote server answered, with its reply made one printable line;
our own reasons never carry paths or exception text (see ``outcome``).

A DSN goes to the original envelope sender with the null envelope sender
(``""``), so it can never cause another DSN: ``build_dsn`` returns None for a
message whose sender is null.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate

from securemail.delivery.outcome import clean
from securemail.errors import UsageError

NULL_SENDER = ""
MAX_HEADERS = 64 * 1024
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
SUBJECTS = {"failed": "Undelivered Mail Returned to Sender",
            "delayed": "Delayed Mail (still being retried)"}
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")
_MSGID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>$")

BounceSender = Callable[[bytes, str], None]
"""Enqueues a DSN: ``(dsn_bytes, recipient)``, always with the null envelope sender."""


def header_block(message: bytes) -> bytes:
    """The header fields of ``message`` with CRLF line ends, at most 64 KiB of whole lines.

    Scanning stops at the blank line, or at the first line that is neither a
    header field nor a continuation, so a malformed message cannot push body
    text into a DSN.
    """
    cut = len(message) > MAX_HEADERS
    lines = message[:MAX_HEADERS].split(b"\n")
    if cut:
        lines.pop()  # an incomplete line
    out: list[bytes] = []
    for line in lines:
        line = line.rstrip(b"\r")
        if _FIELD.match(line) or (out and line[:1] in (b" ", b"\t") and line.strip()):
            out.append(line)
        else:
            break
    return b"".join(ln + b"\r\n" for ln in out)


def build_dsn(original_headers: bytes, sender: str, rcpt: str | Sequence[str], reason: str,
              reporting_mta: str, arrival_date: float, now: float, status: str = "5.0.0",
              action: str = "failed", *,
              remote_reply: tuple[int, str] | None = None) -> bytes | None:
    """The DSN for ``rcpt`` (one or several sharing ``reason``), to ``sender``; None if sender is null.

    ``reason`` is our short human-readable text; ``remote_reply`` is the next
    hop's ``(code, text)`` when one answered (it becomes ``Diagnostic-Code``).
    Times are POSIX timestamps.
    """
    if sender == NULL_SENDER:
        return None
    if action not in ACTIONS or not _STATUS.match(status):
        raise UsageError(f"invalid DSN action/status {action!r}/{status!r}")
    rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    if not rcpts:
        raise UsageError("a DSN needs at least one recipient")
    mta = _addr(reporting_mta) or "localhost"
    boundary = f"=_dsn_{uuid.uuid4().hex}"
    headers = header_block(original_headers)
    report = _report(mta, arrival_date, now, rcpts, action, status, remote_reply)
    parts = [
        _part("text/plain; charset=us-ascii", _human(mta, rcpts, clean(reason), action)),
        _part("message/delivery-status", report),
        _part("text/rfc822-headers", headers, cte="7bit" if headers.isascii() else "8bit"),
    ]
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{_addr(sender)}>",
        f"Subject: {SUBJECTS.get(action, 'Delivery Status Notification')}",
        f"Date: {formatdate(now, usegmt=True)}",
        f"Message-ID: <{uuid.uuid4().hex}@{mta}>",
        *_in_reply_to(headers),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "Content-Transfer-Encoding: 7bit" if headers.isascii() else "Content-Transfer-Encoding: 8bit",
    ]
    sep = f"--{boundary}\r\n".encode()
    out = ("\r\n".join(top) + "\r\n\r\nThis is a MIME-encapsulated delivery status report.\r\n\r\n").encode()
    for part in parts:
        out += sep + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _report(mta: str, arrival: float, now: float, rcpts: list[str], action: str, status: str,
            remote_reply: tuple[int, str] | None) -> bytes:
    lines = [f"Reporting-MTA: dns; {mta}", f"Arrival-Date: {formatdate(arrival, usegmt=True)}"]
    for r in rcpts:
        lines += ["", f"Final-Recipient: rfc822; {_addr(r)}", f"Action: {action}",
                  f"Status: {status}"]
        if remote_reply is not None:
            code, text = remote_reply
            lines.append(f"Diagnostic-Code: smtp; {int(code)} {clean(text)}".rstrip())
        lines.append(f"Last-Attempt-Date: {formatdate(now, usegmt=True)}")
    return ("\r\n".join(lines) + "\r\n").encode()


def _human(mta: str, rcpts: list[str], reason: str, action: str) -> bytes:
    if action == "delayed":
        lead = ("Your message has not yet been delivered to the recipient(s) below.\r\n"
                "The gateway will keep trying; you do not need to send it again.")
    else:
        lead = "Your message could not be delivered to the recipient(s) below."
    lines = [f"This is the mail gateway at {mta}.", "", lead, ""]
    lines += [f"  <{_addr(r)}>: {reason}" for r in rcpts]
    lines += ["", "The headers of your message are attached; its content is not."]
    return ("\r\n".join(lines) + "\r\n").encode()


def _part(content_type: str, payload: bytes, cte: str = "7bit") -> bytes:
    head = f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode() + payload


def _in_reply_to(headers: bytes) -> list[str]:
    msgid = BytesHeaderParser(policy=compat32).parsebytes(headers).get("Message-ID", "")
    msgid = str(msgid).strip()
    return [f"In-Reply-To: {msgid}", f"References: {msgid}"] if _MSGID.match(msgid) else []


def _addr(address: str) -> str:
    """An address safe inside one header line: no controls, spaces or angle brackets."""
    return "".join(c for c in str(address) if c not in "<>" and ord(c) > 32 and c != "\x7f")
