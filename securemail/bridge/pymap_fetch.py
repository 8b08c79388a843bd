"""pymap's FETCH values written piece by piece, as its other responses are.

A value of FETCH that needs the message (``BODY[]``, ``BODY[HEADER]``, ``RFC822``...) is a
``DynamicLoadedFetchValue``, which pymap writes by formatting it whole first
(``BytesFormat(b"%b %b")``): the attribute, a space, the value made bytes. For a message that
copies the message twice (the literal made bytes, then the formatted answer): 70 MB more in the
bridge for a 35 MB message shown, held while it goes to a client. ``install()`` gives that class
a ``write`` that writes the attribute and its space, then the value as it writes itself (a
literal: its prefix, then the message's bytes as the bridge holds them, loader.Shown.write),
or the value's bytes. The bytes written are the same: tests/unit/test_pymap_fetch.py holds
them to pymap's own formatting.
"""

from __future__ import annotations

from pymap.bytes import Writeable
from pymap.fetch import DynamicLoadedFetchValue, MessageAttributes


def _write(self: DynamicLoadedFetchValue, writer) -> None:
    loaded = self._get_loaded.loaded_msg
    value = MessageAttributes.placeholder if loaded is None else self.get_value(loaded)
    writer.write(bytes(self.attribute.for_response) + b" ")
    if isinstance(value, Writeable):
        value.write(writer)
    else:
        writer.write(bytes(value))


def install() -> None:
    """FETCH values that need the message are written in pieces from now on (bridge/imap.py,
    before it listens)."""
    DynamicLoadedFetchValue.write = _write
