"""What a client fetches of one folder: decrypted on demand, and ahead of a client reading in order.

A mail client that syncs (mbsync, Thunderbird, a phone) asks for the messages one after the other,
in UID order. Answered one at a time, each would cost an upstream round trip and a decryption
while the client waits. So when a client asks for a message after the one it asked for before,
the ``READ_AHEAD`` messages that follow are fetched from upstream in one FETCH (``BATCH_BYTES`` at
most per FETCH, by the upstream's RFC822.SIZE) and handed to the reader processes
(readers.py) together: they decrypt, and parse what they show for IMAP, on every core while the
event loop answers the client. A
message larger than ``CACHE_LARGEST`` upstream is not kept in the cache: it is read ahead only
while those on their way or waiting add up to ``AHEAD_BYTES``, and is held for the client's one
read of it. What is read ahead waits in memory (cache.py, or that hold), never on disk.
"""

from __future__ import annotations

import asyncio
import pickle
from bisect import bisect_right
from typing import TYPE_CHECKING, Callable

from pymap.mime import MessageContent

from .structure import structure

if TYPE_CHECKING:
    from ..mail.read import Given

CACHE_LARGEST = 1 << 20   # bytes: a message shown larger than this is not kept in the cache
PARSED_COST = 2           # memory of a message parsed for IMAP, per byte of it
READ_AHEAD = 32           # messages decrypted ahead of a client reading a folder in order
BATCH_BYTES = 4 << 20     # upstream bytes asked for in one FETCH
AHEAD_BYTES = 16 << 20    # upstream bytes of big messages (not kept in the cache) read ahead at once


class Loader:
    def __init__(self, box) -> None:   # mailbox.Mailbox: its name, UIDs, sizes and parts
        self.box = box
        self._loading: dict[int, asyncio.Future] = {}
        self._last = 0
        self._frontier = 0   # UIDs up to this one were seen held or read ahead (_ahead): not looked at again
        self._big: dict[int, int] = {}                           # big ones read ahead: UID -> size
        self._held: dict[int, MessageContent] = {}                # ... and decrypted, until read once

    def _key(self, uid: int) -> tuple:
        return (self.box.name, self.box.uid_validity, uid)

    async def content(self, uid: int) -> MessageContent | None:
        found = self._take(uid)
        if found is None:
            found = self.box.parts.cache.get(self._key(uid))
        if uid <= self._last:   # read again from further back: what was ahead may have left the cache
            self._frontier = min(self._frontier, uid)
        ahead = self._ahead(uid) if uid > self._last else []
        self._last = uid
        wanted = ([] if found is not None or uid in self._loading else [uid]) + ahead
        if wanted:
            self._begin(wanted)
        if found is not None:
            return found
        shown = await asyncio.shield(self._loading[uid])
        self._take(uid)  # a big one read ahead and asked for while on its way: not held again
        return shown

    def forget(self) -> None:
        self._last = self._frontier = 0
        self._big.clear()
        self._held.clear()

    def _take(self, uid: int) -> MessageContent | None:
        if uid in self._held or (uid in self._big and uid not in self._loading):
            self._big.pop(uid, None)
        return self._held.pop(uid, None)

    def _ahead(self, uid: int) -> list[int]:
        """The messages after ``uid`` not yet in memory or on their way, once half the window is free.
        Those up to ``_frontier`` were on their way or in memory at an earlier call, or read ahead
        by it, and are not looked at again: a client reading in order costs each message one look."""
        uids = self.box.uids
        start = bisect_right(uids, uid)
        window = uids[max(start, bisect_right(uids, self._frontier)):start + READ_AHEAD]
        cache, sizes, todo, big = self.box.parts.cache, self.box.sizes, [], {}
        held = taken = self._frontier   # the end of the window's first run of messages held; of those taken
        holding = taking = True         # ... while that run goes on (held: nothing to read; taken: or read now)
        for u in window:
            if u in self._loading or u in self._big or cache.get(self._key(u)) is not None:
                held, taken = (u if holding else held), (u if taking else taken)
                continue
            holding = False
            size = sizes.get(u, AHEAD_BYTES + 1)
            if size > CACHE_LARGEST:
                if sum(self._big.values()) + sum(big.values()) + size > AHEAD_BYTES:
                    taking = False   # left for a later call, when the big ones on their way leave room
                    continue
                big[u] = size
            todo.append(u)
            taken = u if taking else taken
        if not (len(todo) * 2 >= READ_AHEAD or start + READ_AHEAD >= len(uids) or big):
            self._frontier = held
            return []
        self._big.update(big)
        self._frontier = taken
        return todo

    def _begin(self, uids: list[int]) -> None:
        batch, size = [], 0
        for uid in uids:
            done = self._loading[uid] = asyncio.get_running_loop().create_future()
            done.add_done_callback(lambda f, uid=uid: self._ended(uid, f))
            batch.append(uid)
            size += self.box.sizes.get(uid, CACHE_LARGEST)
            if size >= BATCH_BYTES:
                asyncio.ensure_future(self._fetch(batch))
                batch, size = [], 0
        if batch:
            asyncio.ensure_future(self._fetch(batch))

    def _ended(self, uid: int, done: asyncio.Future) -> None:
        if self._loading.get(uid) is done:
            del self._loading[uid]
        if not done.cancelled():
            done.exception()  # a read-ahead nobody waited for: its failure is not an error

    async def _fetch(self, uids: list[int]) -> None:
        box, validity = self.box, self.box.uid_validity
        try:
            got = await box.parts.upstream.run(box.name, lambda c: c.fetch(uids, ["BODY.PEEK[]"]))
        except Exception as e:  # noqa: BLE001 - each waiting client command gets it
            for uid in uids:
                self._fail(uid, e)
            return
        for uid in uids:
            raw = got.pop(uid, {}).pop(b"BODY[]", None)
            if raw is None:
                self._settle(uid, None)
            else:
                asyncio.ensure_future(self._show((box.name, validity, uid), raw))
            del raw

    async def _show(self, key: tuple, raw: bytes) -> None:
        parts = self.box.parts
        try:
            answer = await parts.submit(raw)
            del raw   # the reader has it
            content, head = restore(*await answer)
        except Exception as e:  # noqa: BLE001 - the client's command gets a temporary NO
            self._fail(key[2], e)
            return
        if head is None:  # kept whole; its header goes to the header cache if the budget pushes it out
            parts.cache.put(key, content, len(content) * PARSED_COST)
        else:  # a big one is read once (a client keeps its own copy): only its header is kept
            parts.headers.put(key, head, len(head.header) * PARSED_COST)
            if key[2] in self._big:
                self._held[key[2]] = content
        self._settle(key[2], content)

    def _settle(self, uid: int, value) -> None:
        done = self._loading.get(uid)
        if done is not None and not done.done():
            done.set_result(value)

    def _fail(self, uid: int, error: Exception) -> None:
        done = self._loading.get(uid)
        if done is not None and not done.done():
            done.set_exception(error)


def shown_with_structure(show: Callable, raw: bytes | Given) -> tuple[bytes, bytes]:
    """In a reader process (or the fallback thread): the message shown and its structure as
    pymap records it (``MessageContent.json``: line offsets and content types, no content), with
    its header's when it is too big to keep whole. ``raw``: the upstream message, handed over by
    a reader (``read.Given``: ``show`` lets it go as soon as it can)."""
    shown = show(raw)
    del raw
    found = structure(shown)
    head = None
    if len(shown) > CACHE_LARGEST:
        lines = found["header"]["lines"]
        head = bytes(shown[lines[0][0]:lines[-1][2]]) + b"\r\n" if lines else b"\r\n"
    head_structure = MessageContent.parse(head).json if head is not None else None
    return shown, pickle.dumps((found, head, head_structure), pickle.HIGHEST_PROTOCOL)


def restore(shown: bytes, meta: bytes) -> tuple[MessageContent, MessageContent | None]:
    """On the event loop: the message parsed for IMAP without parsing it (``Shown``), and its
    header alone when it is too big to keep whole (else None)."""
    found, head, head_structure = pickle.loads(meta)
    return (Shown(shown, found),
            MessageContent.from_json(head, head_structure) if head is not None else None)


class Shown(MessageContent):
    """pymap's ``MessageContent`` of a message shown, whose parts are restored from the reader's
    structure (``from_json``, which parses every Content-Type with the email package) only when
    a command asks for more than the message's bytes, size and lines: a client that syncs asks
    for ``BODY.PEEK[]`` alone, and most messages are never restored."""

    __slots__ = ("_data", "_structure", "_whole")

    def __init__(self, data: bytes, structure: dict) -> None:   # noqa: D107 - the parse is deferred
        head, body = structure["header"]["lines"], structure["body"]["lines"]
        self._data, self._structure, self._whole = data, structure, None
        # the bytes MessageContent.__init__ takes: from its header's first line to its body's last
        self._raw = memoryview(data)[head[0][0] if head else 0:body[-1][2] if len(body) else -1]
        self.lines = len(head) + len(body) - 1

    def _restored(self) -> MessageContent:
        if self._whole is None:
            self._whole = MessageContent.from_json(self._data, self._structure)
            self._structure = None
        return self._whole

    def write(self, writer) -> None:
        """The message's bytes as they are held: pymap's Writeable.write would copy a 35 MB
        message into a new bytes object to write it."""
        writer.write(self._raw)

    header = property(lambda self: self._restored().header)   # in place of the parent's slots
    body = property(lambda self: self._restored().body)

    @property
    def restored(self) -> bool:
        return self._whole is not None


def header_of(content: MessageContent) -> tuple[MessageContent, int]:
    """The header of a message pushed out of the cache, parsed alone, and its cost in the header cache."""
    head = bytes(content.header) + b"\r\n"
    return MessageContent.parse(head), len(head) * PARSED_COST
