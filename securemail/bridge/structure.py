"""The MIME structure of a message shown, as pymap records it, found with byte searches.

pymap's ``MessageContent.parse`` makes a tuple for every line of a message and compares every
line of a multipart's body with its boundary, in Python: for a 1 MiB attachment 18,000 lines
and about 40% of a reader process's time; for a 25 MiB one 460,000 tuples, some 50 MB. What
the event loop needs of a body (loader.py's ``Span``) is its number of lines and its first and
last line. ``structure(data)`` gives what ``loader._spans(MessageContent.parse(data).json)``
gives, finding line ends, blank lines and delimiter lines with ``bytes.find`` and ``count``.
Each header block (a few lines) is still read by pymap's own ``MessageHeader``, so every field
and every Content-Type reads as pymap reads it. tests/unit/test_bridge_structure.py holds the
two to equal answers: the loader's shapes, every message of the corpus as the bridge shows it,
and bent ones (delimiters mid-line, unclosed, empty parts, no blank line, bare LF, CR alone).
"""

from __future__ import annotations

import base64
from email.headerregistry import ContentTypeHeader
from email.policy import SMTP

from pymap.mime import MessageBody, MessageHeader

from ..mail.mimeparse import header_field

_WS = b" \t\n\r\x0b\f"   # pymap.mime._util.whitespace: a line of only these ends a header block
_DEFAULT_TYPE = str(MessageBody.empty().content_type)
_CONTENT_TYPE_KEY = base64.b64encode(b"content-type").decode("ascii")   # pymap's key for the field


class Span:
    """A body's lines as pymap uses them once parsed: how many there are and where the first begins
    and the last ends (``len``, ``[0]``, ``[-1]``). One tuple per line would cost the event loop
    60 MB for a 25 MiB attachment (440,000 lines), and the time to unpickle them."""

    __slots__ = ("first", "last", "count")

    def __init__(self, lines) -> None:
        self.first, self.last = (tuple(lines[0]), tuple(lines[-1])) if lines else (None, None)
        self.count = len(lines)

    @classmethod
    def of(cls, first: tuple | None, last: tuple | None, count: int) -> "Span":
        span = cls(())
        span.first, span.last, span.count = first, last, count
        return span

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if self.count and index in (0, -1, self.count - 1):
            return self.first if index == 0 else self.last
        raise IndexError("a Span knows its first and last line only")

    def __iter__(self):
        raise TypeError("a Span knows its first and last line only")

    def __eq__(self, other) -> bool:
        return isinstance(other, Span) and (self.first, self.last, self.count) == (other.first, other.last, other.count)

    def __repr__(self) -> str:
        return f"Span({self.first}, {self.last}, {self.count})"


class _Lines:
    """A run of whole lines of the message: where its first and last begin, and how many."""

    __slots__ = ("first", "last", "count")

    def __init__(self, first: int, last: int, count: int) -> None:
        self.first, self.last, self.count = first, last, count


class _Text:
    def __init__(self, data: bytes) -> None:
        self.data, self.view, self.size = data, memoryview(data), len(data)

    def line(self, start: int) -> tuple[int, int, int]:
        """pymap's line tuple of the line beginning at ``start``: (start, end without its CRLF
        or LF, the next line's start)."""
        at = self.data.find(b"\n", start)
        if at < 0:
            return (start, self.size, self.size)
        return (start, at - 1 if at > start and self.data[at - 1] == 13 else at, at + 1)

    def run(self, first: int, last: int) -> _Lines:
        """The lines from the one at ``first`` to the one at ``last`` (both line starts)."""
        if last < first:
            return _Lines(first, first, 0)
        return _Lines(first, last, self.data.count(b"\n", first, last) + 1)

    def line_before(self, start: int) -> int:
        """Where the line before the one beginning at ``start`` begins."""
        return self.data.rfind(b"\n", 0, start - 1) + 1


def structure(data: bytes) -> dict:
    """pymap's structure of ``data`` (``MessageContent.json``), each body's lines as a ``Span``."""
    text = _Text(data)
    return _content(text, text.run(0, data.rfind(b"\n") + 1))


def _content(text: _Text, lines: _Lines) -> dict:
    head, body = _split(text, lines)
    header = MessageHeader._parse(text.data, text.view, head)
    content_type = _content_type(text.data, header.json["folded"])
    nested: list[dict] = []
    if content_type is not None and content_type.maintype == "multipart":
        boundary = _boundary(content_type)
        if boundary:
            nested = [_content(text, part) for part in _parts(text, body, boundary)]
    elif content_type is not None and content_type.maintype == "message" and content_type.subtype == "rfc822":
        nested = [_content(text, body)]
    return {"header": header.json,
            "body": {"lines": _span(text, body), "content_type": str(content_type or _DEFAULT_TYPE),
                     "nested": nested}}


def _content_type(data: bytes, folded) -> ContentTypeHeader | None:
    """``header.parsed.content_type`` as pymap reads it (ParsedHeaders: the first Content-Type
    field's lines, unfolded by the SMTP policy, through a HeaderRegistry), its parse shared by
    equal fields (``mimeparse.header_field``): most messages' parts carry one of a few."""
    for key, lines in folded:
        if key == _CONTENT_TYPE_KEY:
            name, value = SMTP.header_source_parse([data[s:e].decode("ascii", "surrogateescape")
                                                    for s, e, _ in lines])
            return header_field(name, value)
    return None


def _split(text: _Text, lines: _Lines) -> tuple[list, _Lines]:
    """pymap's ``_split_lines``: the header's lines (to the first blank one, included) and the
    body's run; no blank line: no header, all body."""
    head, at = [], lines.first
    for i in range(lines.count):
        line = text.line(at)
        head.append(line)
        if not text.data[line[0]:line[1]].strip(_WS):
            if i + 1 == lines.count:
                return head, _Lines(line[2], line[2], 0)
            return head, _Lines(line[2], lines.last, lines.count - i - 1)
        at = line[2]
    return [], lines


def _boundary(content_type) -> bytes | None:
    boundary = content_type.params.get("boundary")
    if isinstance(boundary, str):
        try:
            return boundary.encode("ascii")
        except UnicodeError:
            return None
    return boundary or None


def _parts(text: _Text, body: _Lines, boundary: bytes) -> list[_Lines]:
    """pymap's ``_find_parts``: the runs of lines between lines that are exactly ``--boundary``,
    up to the first line that is exactly ``--boundary--`` (or the body's end)."""
    if not body.count:
        return []
    data, delimiter = text.data, b"--" + boundary
    end_of_body = text.line(body.last)[1]
    starts: list[int] = []   # where each part's first line begins
    parts: list[_Lines] = []
    at = data.find(delimiter, body.first, end_of_body)
    while at >= 0:
        if at == body.first or data[at - 1] == 10:
            line = text.line(at)
            rest = text.view[at + len(delimiter):line[1]]
            if rest == b"--" or rest == b"":
                if starts:
                    parts.append(text.run(starts[-1], text.line_before(at)))
                if rest == b"--":
                    return parts
                starts.append(line[2])
        at = data.find(delimiter, at + 1, end_of_body)
    if starts:
        parts.append(text.run(starts[-1], body.last) if starts[-1] <= body.last else _Lines(0, 0, 0))
    return parts


def _span(text: _Text, lines: _Lines) -> Span:
    if not lines.count:
        return Span.of(None, None, 0)
    return Span.of(text.line(lines.first), text.line(lines.last), lines.count)
