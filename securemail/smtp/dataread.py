"""DATA reading helpers of the SMTP server: the end-of-data marker, dot-unstuffing, line lengths.

Pure functions on bytes, used by ``GatewaySMTP._read_data`` (smtp/server.py).
"""

from __future__ import annotations

MAX_DATA_LINE = 1000  # octets including CRLF after dot-unstuffing, RFC 5321 4.5.3.1.6
MAX_LINE_TEXT = MAX_DATA_LINE - 2
END_OF_DATA = b"\r\n.\r\n"


def marker_begun(seen: bytes, ahead: bytes) -> int:
    """How many octets of the end-of-data marker may end ``seen`` (0 to 4), given octets ``ahead``.

    ``ahead`` is what the reader holds unread (peeked, and b"" where it cannot
    be): a line that follows a line ending in "." is then read together with it,
    not apart, unless it could be the lone dot.
    """
    for k in (4, 3, 2, 1):
        if seen.endswith(END_OF_DATA[:k]) and END_OF_DATA[k:].startswith(ahead[:5 - k]):
            return k
    return 0


def unstuffed(lines: bytes) -> bytes:
    """Whole CRLF-ended lines, each without its first character if that is a dot (RFC 5321 4.5.2)."""
    lines = lines[1:] if lines[:1] == b"." else lines
    return lines.replace(b"\r\n.", b"\r\n")


def too_long(lines: bytes) -> bool:
    """Whether one of these CRLF-ended lines is over 1000 octets with its CRLF.

    A window of 1000 octets from a line's start must hold that line's LF; every
    line up to the window's last LF is then short enough, and the next window
    starts after it: about one search per 1000 octets, no line objects.
    """
    start = 0
    while len(lines) - start > MAX_DATA_LINE:
        last_lf = lines.rfind(b"\n", start, start + MAX_DATA_LINE)
        if last_lf < 0:
            return True
        start = last_lf + 1
    return False


def text_length(part: bytes) -> int:
    """Octets of a line's text in ``part``, the start of a line: no stuffing dot, no CR of its CRLF."""
    return len(part) - part.startswith(b".") - part.endswith(b"\r")
