"""An independent judge of a body that crossed to a member: the gateway's list and skeleton, and packets.

Written for the tests from the promise, not from the production code (it
imports nothing of securemail): a body that crosses to a member gateway is
made of exactly

- header fields from the list (From, To, Cc, Date, Message-ID, MIME-Version,
  Content-Type, Subject ``...``), each once, plus the gateway's DKIM-Signatures
  (one per key), each value of the shape its name says;
- the gateway's MIME skeleton: RFC 3156 with no preamble, the fixed part
  headers, ``Version: 1``, no epilogue; or inline, the armored block alone;
- one ASCII-armored OpenPGP message without armor headers, whose bytes are
  PKESK/SKESK packets then one SEIPD packet, and nothing after it.

``problems(body)`` lists what is wrong (empty: the body is clean). It parses
with the email package and with its own regular expressions and packet walker.
"""

from __future__ import annotations

import base64
import binascii
import email
import re
from email import policy
from email.utils import getaddresses, parsedate_to_datetime

import anycrc

LIST = {"from", "to", "cc", "date", "message-id", "subject", "mime-version", "content-type"}
SIGNED_AFTER = {"dkim-signature"}
BOUNDARY = r"securemail-[0-9a-f]{24}"
MIME_TYPE = re.compile(rb'multipart/encrypted; protocol="application/pgp-encrypted";\r\n boundary="('
                       + BOUNDARY.encode() + rb')"')
INLINE_TYPE = b'text/plain; charset="us-ascii"'
ARMOR = (rb"-----BEGIN PGP MESSAGE-----\r\n\r\n((?:[A-Za-z0-9+/]{1,76}={0,2}\r\n)+)"
         rb"(?:=([A-Za-z0-9+/]{4})\r\n)?-----END PGP MESSAGE-----\r\n")
CONTROL = (b"Content-Type: application/pgp-encrypted\r\n"
           b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n")
DATA = (b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
        b"Content-Description: OpenPGP encrypted message\r\n"
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n')
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):[ \t]*(.*)", re.S)
_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_DATE = re.compile(r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}(?::\d{2})? (?:[+-]\d{4}|[A-Z]{1,5})(?: \([A-Z]{1,5}\))?")
_DKIM_TAG = re.compile(r"\s*(v|a|c|d|s|t|x|h|bh|b|i|l|q|z)\s*=\s*[A-Za-z0-9+/=:.@_\-\s;|]*")
ESK_TAGS, SEIPD_TAG = {1, 3}, 18
_CRC24 = anycrc.Model("CRC24-OPENPGP")


def problems(body: bytes) -> list[str]:
    """What in ``body`` is not the gateway's list, skeleton or OpenPGP packets ([] when clean)."""
    head, sep, rest = body.partition(b"\r\n\r\n")
    if not sep:
        return ["no empty line after the header block"]
    found, fields = _fields(head + b"\r\n")
    if found:
        return found
    ctype = fields.get("content-type", b"")
    m = MIME_TYPE.fullmatch(ctype)
    if m:
        found = _skeleton(rest, m.group(1).decode())
    elif ctype == INLINE_TYPE:
        found = _armor(rest)
    else:
        found = [f"Content-Type is not the gateway's: {ctype[:80]!r}"]
    return found or _parses(body)


def _fields(head: bytes) -> tuple[list[str], dict[str, bytes]]:
    out: list[str] = []
    fields: dict[str, bytes] = {}
    for raw in re.split(rb"\r\n(?![ \t])", head)[:-1]:
        m = _FIELD.fullmatch(raw)
        if m is None:
            out.append(f"not a header field: {raw[:60]!r}")
            continue
        name = m.group(1).decode().lower()
        value = m.group(2)
        if name not in LIST | SIGNED_AFTER:
            out.append(f"field outside the list: {name}")
        elif name in fields and name not in SIGNED_AFTER:  # one signature per DKIM key of the domain
            out.append(f"field twice: {name}")
        else:
            fields[name] = value
            out += _value(name, " ".join(value.decode("ascii", "replace").split()))
    return out, fields


def _value(name: str, text: str) -> list[str]:
    ok = {"subject": lambda: text == "...",
          "mime-version": lambda: text == "1.0",
          "message-id": lambda: _MSGID.fullmatch(text) is not None,
          "date": lambda: _DATE.fullmatch(text) is not None and parsedate_to_datetime(text) is not None,
          "from": lambda: _addresses(text), "to": lambda: _addresses(text), "cc": lambda: _addresses(text),
          "dkim-signature": lambda: all(_DKIM_TAG.fullmatch(t) for t in text.rstrip(";").split(";")),
          "content-type": lambda: True}[name]
    try:
        return [] if ok() else [f"{name} is not of its kind"]
    except (TypeError, ValueError):
        return [f"{name} is not of its kind"]


def _addresses(text: str) -> bool:
    pairs = getaddresses([text])
    return bool(pairs) and all("@" in a for _, a in pairs)


def _skeleton(rest: bytes, boundary: str) -> list[str]:
    b = boundary.encode()
    start = b"--" + b + b"\r\n" + CONTROL + b"--" + b + b"\r\n" + DATA
    end = b"--" + b + b"--\r\n"
    if not rest.startswith(start):
        return ["body does not start with the skeleton (preamble, control part or part headers)"]
    if not rest.endswith(end):
        return ["body does not end with the closing boundary (epilogue)"]
    return _armor(rest[len(start):len(rest) - len(end)])


def _armor(text: bytes) -> list[str]:
    """``text`` must be one armored message and nothing else (its CRLF ends the END line)."""
    m = re.fullmatch(ARMOR, text)
    if m is None:
        return ["not one bare armored OpenPGP message (armor headers or text around it)"]
    try:
        data = binascii.a2b_base64(m.group(1).replace(b"\r\n", b""), strict_mode=True)
    except binascii.Error:
        return ["armor is not base64"]
    if m.group(2) is not None and base64.b64decode(m.group(2)) != _CRC24.calc(data).to_bytes(3, "big"):
        return ["armor checksum is not the data's"]
    return _packets(data)


def _packets(data: bytes) -> list[str]:
    tags, pos = [], 0
    while pos < len(data):
        ctb = data[pos]
        if not ctb & 0x80 or not ctb & 0x40:
            return ["a packet that is not new-format"]
        n, used = _length(data, pos + 1)
        if n is None or pos + 1 + used + n > len(data):
            return ["a packet with a bad or partial length"]
        tags.append(ctb & 0x3F)
        pos += 1 + used + n
    if not tags or tags[-1] != SEIPD_TAG or any(t not in ESK_TAGS for t in tags[:-1]):
        return [f"packets are not ESKs then one SEIPD: {tags}"]
    return []


def _length(data: bytes, pos: int) -> tuple[int | None, int]:
    if pos >= len(data):
        return None, 0
    o = data[pos]
    if o < 192:
        return o, 1
    if o < 224:
        return (((o - 192) << 8) + data[pos + 1] + 192, 2) if pos + 1 < len(data) else (None, 0)
    if o == 255:
        return (int.from_bytes(data[pos + 1:pos + 5], "big"), 5) if pos + 4 < len(data) else (None, 0)
    return None, 0  # partial lengths are never written by the gateway


def _parses(body: bytes) -> list[str]:
    """The email package must see the same: two parts (or one text part), nothing around them."""
    msg = email.message_from_bytes(body, policy=policy.compat32)
    if msg.get_content_type() == "text/plain":
        return [] if not msg.is_multipart() else ["text/plain with parts"]
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) != 2 or msg.defects:
        return ["email package sees another structure"]
    if (msg.preamble or "").strip() or (msg.epilogue or "").strip():
        return ["email package sees a preamble or an epilogue"]
    return []
