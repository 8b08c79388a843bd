"""The outer shell of a PGP/MIME message (RFC 3156), taken apart without the email parser.

Python's email parser walks a message line by line: for an encrypted message it spends more time
on the armored payload than the decryption does. A reader that needs only the payload (the
bridge, which hands the decrypted entity to the mail client as it is) asks
``encrypted_payload(raw, policy)``: the outer header fields (stored as the email parser stores
them, so that they read exactly as on the general path) and the second part's payload, decoded,
found with byte searches. It answers only for the canonical shape: a CRLF header block,
``multipart/encrypted`` with a boundary, exactly two parts before the close delimiter, the first
``application/pgp-encrypted``, the second in 7bit, 8bit, binary or base64. For anything else it
answers None and the caller reads the message the general way, which refuses what is malformed.
Nothing here decides what is safe: the payload goes through every check of the decryption.
"""

from __future__ import annotations

import binascii
import re
from email import policy as _policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from typing import NamedTuple

from ..errors import SecureMailError
from .headers import HEADER_BYTES, parse_header_block

_AS_IS = ("7bit", "8bit", "binary")


def head_only(raw: bytes, how: _policy.EmailPolicy) -> tuple[EmailMessage, int] | None:
    """(the header fields of ``raw`` parsed alone, where its body starts), or None when its
    header block is not clean CRLF within the limits."""
    try:
        block = parse_header_block(raw)
    except SecureMailError:
        return None
    if not raw[:block.size].isascii():
        # headers only: the feed parser would otherwise look for the parts of a multipart
        # (compiling a pattern for its boundary, new for every message) in the empty body given here
        return BytesHeaderParser(policy=how).parsebytes(raw[:block.size] + b"\r\n"), block.body_start
    # An ASCII block our parser read cleanly is stored as the feed parser stores it (its
    # header_source_parse of each field's lines: the name as written, the value after the colon
    # with folds kept), without reading it a second time line by line.
    msg = (how.message_factory or Message)(policy=how)
    for f in block.fields:
        msg.set_raw(f.raw[:f.raw.index(b":")].decode("ascii"), _value(f))
    msg.set_payload("")
    return msg, block.body_start


class Payload(NamedTuple):
    """The encrypted part's payload: ``data[start:end]``, not copied out of the message."""
    data: bytes
    start: int
    end: int

    def __bytes__(self) -> bytes:
        return self.data[self.start:self.end]


def encrypted_payload(raw: bytes, how: _policy.EmailPolicy) -> tuple[EmailMessage, Payload] | None:
    """(outer header fields, the encrypted part's decoded payload), or None (see the module docstring)."""
    found = head_only(raw, how)
    if found is None:
        return None
    head, body_start = found
    plain = plain_content_type(head)
    if plain is not None:
        boundary = plain[1] if plain[0] == "multipart/encrypted" else None
    else:
        boundary = head.get_boundary() if head.get_content_type() == "multipart/encrypted" else None
    if not boundary:
        return None
    parts = _parts(raw, body_start - 2, b"\r\n--" + boundary.encode("ascii", "replace"))
    if parts is None or len(parts) != 2:
        return None
    control, data = parts
    first = part_head(raw, control)
    if first is None or first[0] != "application/pgp-encrypted":
        return None
    second = part_head(raw, data)
    if second is None:
        return None
    encoding, start = second[1], data[0] + second[2]
    if encoding in _AS_IS:
        return head, Payload(raw, start, data[1])
    if encoding == "base64":
        try:
            decoded = binascii.a2b_base64(memoryview(raw)[start:data[1]])
        except binascii.Error:
            return None
        return head, Payload(decoded, 0, len(decoded))
    return None


_PARAM = re.compile(r';[ \t]*([A-Za-z0-9-]+)=("[ !#-\[\]-~]*"|[A-Za-z0-9._+-]+)[ \t]*')
_PLAIN_TYPE = re.compile(r'[ \t]*([A-Za-z0-9._+-]+/[A-Za-z0-9._+-]+)[ \t]*((?:' + _PARAM.pattern + r')*);?[ \t]*')


def plain_content_type(head: Message) -> tuple[str, str | None] | None:
    """(content type, boundary or None) of ``head`` as ``get_content_type`` and ``get_boundary``
    answer them, read from its first Content-Type field when that is plainly written (a type,
    then distinct parameters, each a token or a quoted string with no backslash, all ASCII, no
    encoded word); otherwise None, and the caller asks the policy. The policy parses the field through the
    header registry, the costliest part of reading a message's shell for the bridge, and its
    memo of parsed fields cannot help: the boundary is new in every message.
    tests/fuzz/test_shell_fuzz.py holds the answers to the policy's."""
    value = next((v for k, v in head.raw_items() if k.lower() == "content-type"), None)
    if not isinstance(value, str) or "=?" in value:   # an encoded word: the policy decodes it
        return None
    m = _PLAIN_TYPE.fullmatch(value.replace("\r", "").replace("\n", ""))
    if m is None:
        return None
    params = [(k.lower(), v[1:-1] if v.startswith('"') else v) for k, v in _PARAM.findall(m.group(2))]
    if len({k for k, _ in params}) != len(params):
        return None
    boundary = next((v.rstrip() for k, v in params if k == "boundary"), None)
    return m.group(1).lower(), boundary


def part_head(raw: bytes, part: tuple[int, int]) -> tuple[str, str, int] | None:
    """(Content-Type, Content-Transfer-Encoding, where its body starts) of a part, as the email
    package's compat32 policy reads them (policy.default reads those two the same), or None when
    its header block is not clean CRLF. Read from its first bytes only (the body is not copied);
    an ASCII block straight from the fields (tests/fuzz/test_shell_fuzz.py holds it to the
    parser's reading), any other through the parser."""
    start, end = part
    head = raw[start:min(end, start + HEADER_BYTES + 4)]
    try:
        block = parse_header_block(head)
    except SecureMailError:
        return None
    if not head[:block.size].isascii():
        found = head_only(head, _policy.compat32)
        if found is None:
            return None
        msg, body_start = found
        return (msg.get_content_type(), str(msg.get("Content-Transfer-Encoding", "7bit")).strip().lower(),
                body_start)
    ctype, cte = block.first("content-type"), block.first("content-transfer-encoding")
    ctype = _value(ctype).partition(";")[0].strip().lower() if ctype is not None else "text/plain"
    return (ctype if ctype.count("/") == 1 else "text/plain",
            (_value(cte) if cte is not None else "7bit").strip().lower(), block.body_start)


def _value(field) -> str:
    """A field's value as the email parser gives it (header_source_parse): after the colon, blanks
    before it removed, folds kept, the line end removed."""
    return field.raw.decode("ascii").partition(":")[2].lstrip(" \t").rstrip("\r\n")


def _parts(raw: bytes, start: int, delimiter: bytes) -> list[tuple[int, int]] | None:
    """[(start, end)] of each part between ``delimiter`` lines, up to the close delimiter; None
    when a delimiter line is followed by anything but blanks, or there is no close delimiter."""
    parts: list[tuple[int, int]] = []
    pos, opened = raw.find(delimiter, start), None
    while pos >= 0:
        after = pos + len(delimiter)
        if opened is not None:
            parts.append((opened, pos))
        if raw.startswith(b"--", after):
            return parts
        eol = raw.find(b"\r\n", after, after + 1000)
        if eol < 0 or raw[after:eol].strip(b" \t"):
            return None
        opened = eol + 2
        pos = raw.find(delimiter, opened - 2)
    return None
