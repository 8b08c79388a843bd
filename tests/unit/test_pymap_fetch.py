"""pymap_fetch.install: FETCH values that need the message are written in pieces, the same bytes
as pymap's own formatting of them, and a message shown (loader.Shown) is written as it is held,
not copied."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from pymap.backend.dict.mailbox import Message
from pymap.fetch import DynamicLoadedFetchValue, MessageAttributes
from pymap.mime import MessageContent
from pymap.parsing import Params
from pymap.parsing.specials import FetchAttribute

from securemail.bridge import pymap_fetch
from securemail.bridge.loader import restore, shown_with_structure
from tests.unit.test_bridge_loader import SHAPES

ATTRIBUTES = [b"BODY.PEEK[]", b"BODY[]", b"BODY[HEADER]", b"BODY[TEXT]", b"BODY[1]", b"BODY[2]", b"BODY[1.2]",
              b"BODY.PEEK[]<5.100>", b"BODY[]<0>", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"RFC822.SIZE",
              b"BINARY[1]", b"BINARY.SIZE[2]", b"BODY[HEADER.FIELDS (SUBJECT FROM)]",
              b"BODY[HEADER.FIELDS.NOT (SUBJECT)]", b"BODY[1.MIME]", b"BODYSTRUCTURE", b"BODY", b"ENVELOPE"]


class Pieces:
    def __init__(self) -> None:
        self.pieces: list = []

    def write(self, data) -> None:
        self.pieces.append(data)


def answers(content: MessageContent) -> list[tuple[bytes, bytes, list]]:
    """(pymap's bytes, the bytes written by pymap_fetch's write, the pieces) of every loaded value."""
    attrs = [FetchAttribute.parse(memoryview(a), Params())[0] for a in ATTRIBUTES]
    found = MessageAttributes(Message(7, datetime(2026, 12, 3, tzinfo=timezone.utc), [], content=content),
                              None, attrs)

    async def run():
        out = []
        async with found.load_hook():
            for value in found:
                if isinstance(value, DynamicLoadedFetchValue):
                    w = Pieces()
                    pymap_fetch._write(value, w)
                    out.append((bytes(value), b"".join(bytes(p) for p in w.pieces), w.pieces))
        return out
    return asyncio.run(run())


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_written_in_pieces_as_pymap_formats_them(shape):
    raw = SHAPES[shape]
    for content in (MessageContent.parse(raw), restore(*shown_with_structure(lambda r: r, raw))[0]):
        got = answers(content)
        assert len(got) >= 15
        for theirs, ours, _ in got:
            assert ours == theirs


def test_a_message_shown_is_written_as_it_is_held():
    raw = SHAPES["mixed with an attachment"]
    shown, meta = shown_with_structure(lambda r: r, raw)
    held = bytearray(shown)   # as the bridge receives it from a reader
    content = restore(held, meta)[0]
    whole = next(pieces for theirs, _, pieces in answers(content) if theirs.startswith(b"BODY[] {"))
    big = [p for p in whole if len(p) == len(raw)]
    assert len(big) == 1 and isinstance(big[0], memoryview) and big[0].obj is held


def test_install_replaces_the_write():
    pymap_fetch.install()
    assert DynamicLoadedFetchValue.write is pymap_fetch._write
