"""pymap's two runtime protocol checks, made as fast as they are exact.

pymap formats every IMAP response through ``BytesFormat`` (pymap/bytes), which asks of each
value ``isinstance(value, SupportsIndex)`` and ``isinstance(value, SupportsBytes)``: typing's
runtime protocols, which on Python 3.11 walk the protocol's MRO and collect its attributes at
every check. Answering FETCH for a client that syncs, the bridge spent about an eighth of its
event loop's CPU there (bench.bridge: serve CPU 1.17 -> 1.03 s for 1,000 messages).

``install()`` puts in pymap.bytes' namespace two classes that ask the value what typing's check
asks it, without the walk: has it the method, and not set to None.
tests/unit/test_pymap_checks.py holds them to typing's answers. Python 3.12 made typing's check
fast; this can go when the bridge needs 3.12.
"""

from __future__ import annotations

import pymap.bytes


class _HasMethod(type):
    method = ""

    def __instancecheck__(cls, value: object) -> bool:
        return getattr(value, cls.method, None) is not None


class SupportsBytes(metaclass=_HasMethod):
    method = "__bytes__"


class SupportsIndex(metaclass=_HasMethod):
    method = "__index__"


def install() -> None:
    """pymap.bytes checks with these from now on (bridge/imap.py, before it listens)."""
    pymap.bytes.SupportsBytes, pymap.bytes.SupportsIndex = SupportsBytes, SupportsIndex
