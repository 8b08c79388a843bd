"""Is this message really OpenPGP encrypted? Decided by MIME structure and packet sequence, no keys.

Like chatmail's filtermail: multipart/encrypted with an application/pgp-encrypted
first part and one OpenPGP message whose packets are ESKs then exactly one SEIPD;
or a text/plain inline PGP message passing the same packet check. A literal
packet in disguise, SED without MDC, a signed-only message or plaintext are not.

What is encrypted is the packets, never their wrapper: the check keeps the
packets (``packets``) so that the gateway can rebuild the wrapper around them
(``mail.crossing``), and names in ``outside`` where the sender's wrapper held
text (preamble, control part, armor headers, text around the armor, epilogue),
all of it dropped by the rebuild. Inline PGP is the armored block alone: any
text before or after it makes the message not encrypted (the gateway then
encrypts it whole, or a member's mail is refused as plaintext). The extra cost
over the MIME parse is a few regular expressions on the parts, the preamble
and the epilogue.

Given the message's one header-block parse (``mail.headers.HeaderBlock``, as the
crypto stage always does), the check reads its top-level MIME fields from it and
hands the email package only those fields and the body: the received header
block is not parsed again. Without one (a caller holding bytes alone), the email
package parses the whole message, as it always did.
"""

from __future__ import annotations

import binascii
import quopri
import re
from dataclasses import dataclass, field
from email import policy as _policy
from email.feedparser import FeedParser
from email.parser import BytesHeaderParser, BytesParser

from ..crypto.message import check_encrypted
from ..errors import SecureMailError
from ..mail.headers import HeaderBlock

_BEGIN, _END = b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----"
_ARMOR_HEADER = re.compile(rb"[ \t]*\r?\n[ \t]*[^\s]")  # after BEGIN: a non-blank line before the blank one
# Deeper MIME structures are refused as malformed: the email package parses and
# writes one recursion level per MIME level and fails somewhere past 300.
MAX_MIME_DEPTH = 100


@dataclass(frozen=True)
class EncryptionCheck:
    encrypted: bool
    format: str               # "pgp/mime" | "inline" | "none"
    reason: str               # why not, when not
    recipient_keyids: tuple[str, ...] = ()
    payload: bytes = field(default=b"", repr=False)   # the OpenPGP message, transfer-decoded
    malformed: bool = False   # the MIME structure cannot be taken apart (unparseable, nested too deep)
    packets: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)  # (tag, body): ESKs, then the SEIPD
    outside: tuple[str, ...] = ()  # where the sender's wrapper held text (never crosses: dropped by the rebuild)


def check(raw: bytes, block: HeaderBlock | None = None) -> EncryptionCheck:
    """The check of ``raw``; ``block`` is its one header-block parse, when the caller made it."""
    try:
        if len(raw) > HEADERS_FIRST_ABOVE:
            head = _top(raw) if block is None else _mime(raw, block, headers_only=True)
            ctype = head.get_content_type()
            if ctype not in ("multipart/encrypted", "text/plain") or (
                    ctype == "text/plain" and not _may_be_inline(raw, head, block)):
                # Cannot be OpenPGP encrypted: no need to parse (and copy) a big body. The gateway
                # handles it on bytes only, so its depth cannot hurt either.
                return EncryptionCheck(False, "none", "message is not OpenPGP encrypted")
        msg = BytesParser(policy=_policy.compat32).parsebytes(raw) if block is None else _mime(raw, block)
        if _too_deep(msg):
            return EncryptionCheck(False, "none", "MIME structure nested too deeply", malformed=True)
        ctype = msg.get_content_type()
        if ctype == "multipart/encrypted":
            parts = msg.get_payload()
            if (not isinstance(parts, list) or len(parts) != 2
                    or parts[0].get_content_type() != "application/pgp-encrypted"
                    or msg.get_param("protocol") != "application/pgp-encrypted"):
                return EncryptionCheck(False, "none", "multipart/encrypted is not PGP/MIME")
            payload = parts[1].get_payload(decode=True) or b""
            shape = check_encrypted(payload)
            return EncryptionCheck(True, "pgp/mime", "", shape.recipient_keyids, payload,
                                   packets=_packets(shape), outside=_outside_mime(msg, parts[0], payload))
        if ctype == "text/plain" and not msg.is_multipart():
            body = msg.get_payload(decode=True) or b""
            around = _around_armor(body)
            if around is not None and not around.strip():
                shape = check_encrypted(body)
                return EncryptionCheck(True, "inline", "", shape.recipient_keyids, body,
                                       packets=_packets(shape), outside=_armor_headers(body))
            if around is not None:
                return EncryptionCheck(False, "none", "inline PGP message with text around its armor")
        return EncryptionCheck(False, "none", "message is not OpenPGP encrypted")
    except SecureMailError as e:
        return EncryptionCheck(False, "none", e.message)
    except Exception:  # noqa: BLE001 - unparseable is simply not encrypted
        return EncryptionCheck(False, "none", "message cannot be parsed", malformed=True)


HEADERS_FIRST_ABOVE = 1 << 20


def _packets(shape) -> tuple[tuple[int, bytes], ...]:
    """The packets that cross: the PKESKs, the SKESKs, then the SEIPD (marker and padding dropped)."""
    return tuple((p.tag, p.body) for p in shape.pkesks + shape.skesks) + ((shape.seipd.tag, shape.seipd.body),)


def _around_armor(data: bytes) -> bytes | None:
    """The bytes before the first armored message and after its END line; None without one."""
    begin = data.find(_BEGIN)
    end = data.find(_END, begin + len(_BEGIN)) if begin >= 0 else -1
    if end < 0:
        return None
    return data[:begin] + data[end + len(_END):]


def _armor_headers(armored: bytes) -> tuple[str, ...]:
    """("armor headers",) when lines (Comment:, Version:, ...) sit between BEGIN and the blank line."""
    begin = armored.find(_BEGIN)
    return ("armor headers",) if begin >= 0 and _ARMOR_HEADER.match(armored, begin + len(_BEGIN)) else ()


def _outside_mime(msg, control, payload: bytes) -> tuple[str, ...]:
    """Where a PGP/MIME message holds text outside its packets, in the order of the message."""
    out = []
    if (msg.preamble or "").strip():
        out.append("preamble")
    if " ".join(str(control.get_payload()).split()) != "Version: 1":
        out.append("control part")
    around = _around_armor(payload)  # None: binary packets, nothing around them
    if around is not None and around.strip():
        out.append("text around the armor")
    out += _armor_headers(payload)
    if (msg.epilogue or "").strip():
        out.append("epilogue")
    return tuple(out)


def _top(raw: bytes):
    end = raw.find(b"\r\n\r\n")
    head = raw[:end + 2] if end >= 0 else raw[:65536]
    return BytesHeaderParser(policy=_policy.compat32).parsebytes(head)


# The top-level fields the email package reads to take a body apart (its type, boundary, protocol
# and transfer encoding): all the check needs of the header block.
MIME_FIELDS = frozenset({"content-type", "content-transfer-encoding"})
_CHUNK = 8192  # as email.parser.Parser feeds its FeedParser


def _mime(raw: bytes, block: HeaderBlock, headers_only: bool = False):
    """``raw`` as the email package parses it, fed only the MIME fields of ``block`` (in their
    order: the package reads the first of each) and then the body, decoded chunk by chunk as
    BytesParser does (ASCII, surrogateescape) without copying the body whole first."""
    parser = FeedParser(policy=_policy.compat32)
    head = b"".join(f.raw + b"\r\n" for f in block.fields if f.name in MIME_FIELDS) + b"\r\n"
    parser.feed(head.decode("ascii", "surrogateescape"))
    body = b"" if headers_only else block.body(raw)
    for i in range(0, len(body), _CHUNK):
        parser.feed(str(body[i:i + _CHUNK], "ascii", "surrogateescape"))
    return parser.close()


_ARMOR_START = re.compile(rb"\A\s*-----BEGIN PGP MESSAGE-----")


def _may_be_inline(raw: bytes, head, block: HeaderBlock | None = None) -> bool:
    """Could this big text/plain body be an inline PGP message? Decided on its first 4 KiB,
    transfer-decoded: only then is the whole message parsed (a 25 MB parse holds ~8 copies)."""
    if block is not None:
        start = bytes(block.body(raw)[:4096])
    else:
        end = raw.find(b"\r\n\r\n")
        start = raw[end + 4:end + 4 + 4096] if end >= 0 else b""
    cte = str(head.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if cte == "base64":
            b64 = re.sub(rb"[^A-Za-z0-9+/]", b"", start)
            start = binascii.a2b_base64(b64[:len(b64) // 4 * 4])
        elif cte == "quoted-printable":
            start = quopri.decodestring(start)
    except (binascii.Error, ValueError):
        return True  # let the full parse judge it
    return bool(_ARMOR_START.match(start))


def _too_deep(msg) -> bool:
    """True when the MIME tree is nested deeper than MAX_MIME_DEPTH (walked without recursion)."""
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_MIME_DEPTH:
            return True
        if part.is_multipart():
            stack.extend((sub, depth + 1) for sub in part.get_payload())
    return False
