"""The general MIME parse of a message being read, within limits (mail/read.py's, whole messages).

``parse`` refuses, at C speed and before Python's ``email`` parser walks it, a message that
declares more than ``MAX_MIME_PARTS`` parts, and after it one nested deeper than
``MAX_MIME_DEPTH``; any parser failure is a malformed message. ``EachOnce`` is the header
registry that parses each field once per message read.
"""

from __future__ import annotations

import functools
import re
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser

from ..errors import LimitExceeded, MalformedMessage, SecureMailError

MAX_MIME_PARTS = 500
MAX_MIME_DEPTH = 20
SHARED_LONGEST = 256   # characters of a field whose parse is kept for the next message (EachOnce)
_BOUNDARY = re.compile(rb'boundary\s*=\s*"?([^";\r\n]+)', re.I)


class EachOnce(HeaderRegistry):
    """The default header registry, parsing each header field once per message read.

    ``policy.default`` parses a field again each time it is asked for (``get_content_type``,
    ``get_filename``, ``get_param``... ask many times): most of a small message's reading time.
    The parsed fields are immutable; they are kept for one ``read_message``, and those of at most
    ``SHARED_LONGEST`` characters for the next messages too (``_shared``). The class made
    for each field name (``HeaderRegistry`` builds a new one with ``type()`` at every field) is the
    same for every message, and is made once per name for all of them (``_CLASSES``).
    """

    _CLASSES: dict[str, type] = {}

    def __init__(self) -> None:
        super().__init__()
        self._parsed: dict[tuple[str, str], object] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        found = self._CLASSES.get(key)
        if found is None:
            found = self._CLASSES[key] = super().__getitem__(name)
        return found

    def __call__(self, name: str, value: str):
        key = (name.lower(), value)
        found = self._parsed.get(key)
        if found is None:
            found = self._parsed[key] = header_field(name, value)
        return found


_ONE = EachOnce()


def header_field(name: str, value: str):
    """A header field parsed by the default registry (as ``policy.default`` and pymap parse it);
    one of at most SHARED_LONGEST characters parsed once for every message that carries it."""
    return _shared(name, value) if len(value) <= SHARED_LONGEST else HeaderRegistry.__call__(_ONE, name, value)


@functools.lru_cache(maxsize=1024)
def _shared(name: str, value: str):
    """A field parsed once for every message that carries it (a part's Content-Type, a sender's
    From, the outer Subject "..."): header objects are immutable, so this is a pure memo of a
    pure function, of 1,024 fields of at most SHARED_LONGEST characters."""
    return HeaderRegistry.__call__(_ONE, name, value)


def parse(raw: bytes, how: policy.EmailPolicy = policy.default) -> EmailMessage:
    count_parts(raw)
    try:
        msg = BytesParser(policy=how).parsebytes(raw)
        _check_depth(msg, 0)
        return msg
    except SecureMailError:
        raise
    except Exception:  # noqa: BLE001 - any parser failure (incl. RecursionError) is malformed input
        raise MalformedMessage("message cannot be parsed as MIME") from None


def count_parts(raw: bytes, piece: int = 1 << 20) -> int:
    """The distinct boundaries ``raw`` declares; LimitExceeded beyond MAX_MIME_PARTS (at C speed)."""
    words = _words(raw, piece)
    if len(words) > MAX_MIME_PARTS:
        raise LimitExceeded("too many MIME parts")
    declared = {b.strip() for b in _declared(raw, words)}
    if _delimiters(raw, declared - {b""}) > 2 * MAX_MIME_PARTS:
        raise LimitExceeded("too many MIME parts")
    return len(declared)


def _words(raw: bytes, piece: int) -> list[int]:
    """Where the word "boundary" begins, in any case (up to one more than MAX_MIME_PARTS): found in
    pieces lowered one at a time (no lowered copy of the message; a case-blind pattern scans
    about four times slower). A piece is read with the 7 bytes after it, so a word that begins in
    it is found whole, and one that begins after it is found in the next."""
    found: list[int] = []
    for start in range(0, len(raw), piece):
        lowered = raw[start:start + piece + 7].lower()
        at = lowered.find(b"boundary")
        while 0 <= at < piece and len(found) <= MAX_MIME_PARTS:
            found.append(start + at)
            at = lowered.find(b"boundary", at + 8)
    return found


def _declared(raw: bytes, words: list[int]) -> list[bytes]:
    """``_BOUNDARY.findall(raw)``, tried only where the word begins (where a match can begin)."""
    values, end = [], 0
    for at in words:
        if at < end:   # inside the last value found, as findall goes on from a match's end
            continue
        found = _BOUNDARY.match(raw, at)
        if found is not None:
            values.append(found.group(1))
            end = found.end()
    return values


def _delimiters(raw: bytes, bounds: set[bytes]) -> int:
    """Lines that open a part of a declared boundary, counted at C speed before the (slow) parse."""
    if not bounds:
        return 0
    if not any(a != b and b.startswith(a) for a in bounds for b in bounds):
        # no boundary begins another: no line is counted twice, and no pattern is compiled
        return sum(raw.count(b"\n--" + b) for b in bounds)
    return len(re.findall(rb"\n--(?:" + b"|".join(re.escape(b) for b in bounds) + rb")", raw))


def _check_depth(part, depth: int) -> None:
    if depth > MAX_MIME_DEPTH:
        raise LimitExceeded("MIME structure nested too deeply")
    if part.is_multipart():
        for sub in part.iter_parts():
            _check_depth(sub, depth + 1)
