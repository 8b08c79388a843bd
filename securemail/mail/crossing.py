"""What crosses to a member gateway in clear: the headers of one list, around one OpenPGP message.

Everything a member receives is either inside the OpenPGP packets or written by
the gateway: the fields of ``CLEAR_HEADERS`` (routing and MIME, nothing else;
``DKIM-Signature`` is added after, when the gateway signs), the empty-preamble
RFC 3156 skeleton of ``compose.pgp_mime`` (or the bare armored block of
``compose.pgp_inline``), and the armor of the packets, re-written from the
parsed packets (``rearmor``). The sender's own wrapper never crosses: its
preamble, control part, epilogue, armor headers and any text around the armor
are dropped with it.

A sender-encrypted message whose header block carries content outside the list
(a Subject other than ``...``, Keywords, Comments, X-*, Reply-To, a repeated or
malformed routing field, ...) is not passed on with those fields dropped
either: ``seal_reasons`` names why, and the gateway encrypts the whole message
again to the recipients, so those fields cross inside the packets.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..crypto.armor import armor, armor_parts
from ..crypto.packets import packet_header

HIDDEN_SUBJECT = "..."
# Copied from the sender's message (the first of each, unfolded); the gateway writes the rest.
COPIED = ("From", "To", "Cc", "Date", "Message-ID")
# The one list: no other header field crosses to a member in clear.
CLEAR_HEADERS = COPIED + ("Subject", "MIME-Version", "Content-Type")

# Trace and transport fields: removed from every message that leaves (and from every inner entity).
TRANSPORT_HEADERS = ("received", "return-path", "x-originating-ip", "dkim-signature",
                     "authentication-results", "securemail-status", "x-mailer-ip")
# Dropped from a sender-encrypted message without sealing it: transport, the MIME framing the
# rebuilt wrapper replaces, and what the sender's program says about itself (no reader needs it).
DROPPED = frozenset(TRANSPORT_HEADERS) | {"mime-version", "content-type", "content-transfer-encoding",
                                          "user-agent", "content-language", "autocrypt"}

JOIN_BELOW = 1 << 20
_ID = r"[\x21-\x3b\x3d\x3f\x41-\x7e]{1,250}"   # printable ASCII but <, > and @
_MSG_ID = re.compile(rf"<{_ID}@{_ID}>")
# RFC 5322 3.3 date-time, with at most a zone name as comment: free text in a Date would cross.
_DATE = re.compile(r"(?:[A-Z][a-z]{2}, )?\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}(?::\d{2})?"
                   r" (?:[+-]\d{4}|[A-Z]{1,5})(?: \([A-Z]{1,5}\))?")


def seal_reasons(fields: Iterable[tuple[str, bytes]]) -> tuple[str, ...]:
    """Why the header block of a sender-encrypted message cannot cross as the list alone; () if it can.

    ``fields`` are (lower-case name, whole field) pairs. The reasons are the
    gateway's own words, never a field's name or value (those may be content).
    """
    reasons: list[str] = []
    seen: set[str] = set()
    copied = {n.lower() for n in COPIED}
    for name, raw in fields:
        value = _text(raw)
        if name in copied:
            if name in seen:
                reasons.append("a repeated routing field")
            elif not well_formed(name, value):
                reasons.append("a malformed routing field")
            seen.add(name)
        elif name == "subject":
            if value != HIDDEN_SUBJECT:
                reasons.append("a subject in clear")
        elif name not in DROPPED:
            reasons.append("a header field that carries content")
    return tuple(dict.fromkeys(reasons))


def _text(raw: bytes) -> str:
    return " ".join(raw.partition(b":")[2].decode("latin-1").split())


def well_formed(name: str, value: str) -> bool:
    """Date and Message-ID (lower-case ``name``) must be what their names say: free text there would
    cross as it is. A value the builder finds malformed is replaced by the gateway's own."""
    if name == "message-id":
        return _MSG_ID.fullmatch(value) is not None
    if name == "date":
        return _DATE.fullmatch(value) is not None
    return True


def rearmor(packets: Iterable[tuple[int, bytes]]) -> bytes:
    """The armored message (no armor headers) re-written from (tag, body) packets, each with a
    new-format definite-length header: nothing of the sender's armor or framing is kept."""
    parts: list[bytes] = []
    for tag, body in packets:
        parts += [packet_header(tag, len(body)), body]
    if sum(map(len, parts)) <= JOIN_BELOW:  # one small join is cheaper than armoring in parts
        return armor(b"".join(parts))
    return armor_parts(parts)
