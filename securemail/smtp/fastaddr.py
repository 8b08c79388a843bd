"""A fast path for the address in MAIL FROM / RCPT TO.

aiosmtpd parses every address with the email package's RFC 5322 header
parser and defines a class on every call: a tenth of the SMTP process's CPU
at 4 KiB. Nearly every address on the wire is ``<local@domain>`` with a
dot-atom local part and a plain domain; for those, ``fast_getaddr`` gives
exactly what aiosmtpd's ``_getaddr`` gives (tests/unit/test_smtp_fastaddr.py
checks both agree), and None for anything else, which then takes the full
parser.
"""

from __future__ import annotations

import re

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(\S.*))?\Z")


def fast_getaddr(arg: str) -> tuple[str, str] | None:
    """(address, rest) for a plain ``<local@domain> [params]``, else None (use the full parser)."""
    m = _SIMPLE.match(arg)
    if m is None:
        return None
    return m.group(1), m.group(2) or ""
