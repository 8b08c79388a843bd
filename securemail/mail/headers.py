"""The header block of a received message, parsed once, whole, within hard limits.

``parse_header_block(raw, max_bytes=..., max_fields=...)`` is the one parse of a
message's header fields: policy (``policy.facts``), DKIM verification
(``crypto.dkim``) and the transform read the ``HeaderBlock`` it returns, never
the bytes again. Whatever it cannot read the way every other parser would is
refused, so no reader downstream can see fields that policy did not see:

- the header block ends at the first empty line; a message without one is all
  header block, and the limits apply to all of it;
- a block larger than ``max_bytes`` or with more than ``max_fields`` fields is
  refused (``HEADERS_TOO_BIG``, ``TOO_MANY_HEADERS``), never cut short;
- a line that is neither ``name:`` (printable ASCII, no space before the colon)
  nor a continuation of the field above, a whitespace-only continuation, or a
  bare CR or LF, is refused (``MALFORMED_HEADERS``).

The cost is one bounded scan: at most ``max_bytes`` are looked at, whatever
the size of the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import MalformedMessage, Reply
from ..smtp.replies import HEADERS_TOO_BIG, MALFORMED_HEADERS, TOO_MANY_HEADERS

HEADER_BYTES = 64 << 10   # defaults of [limits] header_bytes and header_fields (config.Limits)
HEADER_FIELDS = 1000

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")   # RFC 5322 ftext, then the colon at once
_WSP = b" \t"


class HeaderBlockError(MalformedMessage):
    """The header block is refused; ``smtp_reply()`` is one of the named replies above."""

    def __init__(self, reply: Reply, detail: str) -> None:
        super().__init__(detail=detail, reply=reply)


@dataclass(frozen=True, slots=True)
class Field:
    """One header field as received: ``raw`` is its name, colon, value and continuation lines,
    without the final CRLF; ``name`` is the field name in lower case."""
    name: str
    raw: bytes

    @property
    def value(self) -> bytes:
        """The bytes after the colon, folding kept."""
        return self.raw[self.raw.index(b":") + 1:]

    def text(self, encoding: str = "latin-1") -> str:
        """The value unfolded (CRLFs removed) and stripped, decoded without failing."""
        return self.value.replace(b"\r\n", b"").strip().decode(encoding, "replace")


@dataclass(frozen=True)
class HeaderBlock:
    """The fields of a message in order; ``size`` bytes of header block (each field with its CRLF),
    then the empty line; the body starts at ``body_start`` (``len(raw)`` when there is none)."""
    fields: tuple[Field, ...]
    size: int
    body_start: int

    def all(self, name: str) -> tuple[Field, ...]:
        name = name.lower()
        return tuple(f for f in self.fields if f.name == name)

    def first(self, name: str) -> Field | None:
        name = name.lower()
        return next((f for f in self.fields if f.name == name), None)

    def count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for f in self.fields if f.name == name)

    def texts(self, name: str) -> tuple[str, ...]:
        """The unfolded value of every field called ``name``, in order."""
        return tuple(f.text() for f in self.all(name))

    def head(self, without: Iterable[str] = ()) -> bytes:
        """The header block as bytes (every field with its CRLF), less the fields named in ``without``."""
        drop = {n.lower() for n in without}
        return b"".join(f.raw + b"\r\n" for f in self.fields if f.name not in drop)

    def body(self, raw: bytes) -> memoryview:
        """The body of ``raw`` (the message this block was parsed from), not copied."""
        return memoryview(raw)[self.body_start:]


def parse_header_block(raw: bytes, *, max_bytes: int = HEADER_BYTES,
                       max_fields: int = HEADER_FIELDS) -> HeaderBlock:
    """The header block of ``raw`` (CRLF line ends), or HeaderBlockError; see the module docstring."""
    size, body_start = _extent(raw, max_bytes)
    head = raw[:size]
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        raise HeaderBlockError(MALFORMED_HEADERS, "bare CR or LF in the header block")
    lines = head.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not fields or not line.strip(_WSP):
                raise HeaderBlockError(MALFORMED_HEADERS, "continuation line without a field, or blank")
            fields[-1][1].append(line)
            continue
        m = _FIELD_NAME.match(line)
        if m is None:
            raise HeaderBlockError(MALFORMED_HEADERS, "a line of the header block is not a header field")
        if len(fields) == max_fields:
            raise HeaderBlockError(TOO_MANY_HEADERS, f"more than {max_fields} header fields")
        fields.append((m.group(0)[:-1], [line]))
    return HeaderBlock(tuple(Field(n.decode("ascii").lower(), b"\r\n".join(ls) if len(ls) > 1 else ls[0])
                             for n, ls in fields), size, body_start)


def _extent(raw: bytes, max_bytes: int) -> tuple[int, int]:
    """(size of the header block, where the body starts), looking at no more than max_bytes + 2."""
    if raw.startswith(b"\r\n"):
        return 0, 2  # no header fields at all
    end = raw.find(b"\r\n\r\n", 0, max_bytes + 2)
    if end >= 0:
        return end + 2, end + 4
    if len(raw) > max_bytes:
        raise HeaderBlockError(HEADERS_TOO_BIG, f"header block over {max_bytes} bytes")
    return len(raw), len(raw)  # no empty line: the whole message is header block


__all__ = ["Field", "HeaderBlock", "HeaderBlockError", "parse_header_block", "HEADER_BYTES", "HEADER_FIELDS"]
