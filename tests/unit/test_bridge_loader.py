"""The bridge's loader (bridge/loader.py): read-ahead for a client reading in order, one upstream
FETCH per batch, nothing read ahead for random access or for messages too big to keep, and an
upstream failure answered to the waiting command without leaving the message stuck."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from pymap.message import BaseLoadedMessage
from pymap.mime import MessageContent
from pymap.parsing.specials import FetchRequirement

from securemail.bridge.cache import ViewCache
from securemail.bridge.loader import AHEAD_BYTES, CACHE_LARGEST, READ_AHEAD, Loader, restore, shown_with_structure


def message(uid: int, size: int = 0) -> bytes:
    return (f"Subject: message {uid}\r\nContent-Type: text/plain\r\n\r\nbody of {uid}\r\n".encode()
            + b"x" * size)


class Upstream:
    def __init__(self, sizes: dict[int, int]) -> None:
        self.batches: list[list[int]] = []
        self.fail = False
        self.sizes = sizes

    async def run(self, folder, fn):
        return fn(self)

    def fetch(self, uids, items):
        assert items == ["BODY.PEEK[]"]
        if self.fail:
            raise OSError("upstream gone")
        self.batches.append(list(uids))
        return {u: {b"BODY[]": message(u, self.sizes[u] if self.sizes[u] > CACHE_LARGEST else 0)} for u in uids}


def box(count: int, sizes: dict[int, int] | None = None):
    sizes = sizes if sizes is not None else {u: 500 for u in range(1, count + 1)}
    upstream = Upstream(sizes)

    async def submit(raw: bytes):
        await asyncio.sleep(0)
        return asyncio.ensure_future(asyncio.sleep(0, shown_with_structure(lambda r: r, raw)))

    async def run_cpu(fn, *args):
        return fn(*args)
    parts = SimpleNamespace(upstream=upstream, submit=submit, cache=ViewCache(32 << 20), headers=ViewCache(8 << 20),
                            run_cpu=run_cpu)
    b = SimpleNamespace(name="INBOX", uid_validity=7, uids=list(range(1, count + 1)),
                        sizes=sizes, parts=parts)
    return b, Loader(b), upstream


def test_a_client_reading_in_order_gets_batches_read_ahead():
    async def main():
        b, loader, upstream = box(200)
        for uid in range(1, 201):
            content = await loader.content(uid)
            assert bytes(content) == message(uid)
        fetched = [u for batch in upstream.batches for u in batch]
        assert sorted(fetched) == list(range(1, 201))              # each message fetched once
        assert len(upstream.batches) <= 200 // (READ_AHEAD // 2) + 2  # in batches, not one by one
        assert max(len(batch) for batch in upstream.batches) >= READ_AHEAD // 2
    asyncio.run(main())


def test_reading_in_order_looks_at_each_message_ahead_once_and_again_after_going_back():
    """Each call of a client reading in order looked at the whole window ahead (READ_AHEAD
    cache lookups a message); a frontier keeps it to those not yet read ahead. Going back to the start with the cache
    emptied meanwhile reads ahead again, in batches."""
    async def main():
        b, loader, upstream = box(200)
        looks = []
        get = b.parts.cache.get
        b.parts.cache.get = lambda key: (looks.append(key), get(key))[1]
        for uid in range(1, 201):
            assert bytes(await loader.content(uid)) == message(uid)
        assert len(looks) <= (READ_AHEAD // 2 + 2) * 200, f"{len(looks)} cache lookups for 200 messages read in order"
        b.parts.cache = ViewCache(32 << 20)   # what was read is gone (pushed out of a full cache)
        upstream.batches.clear()
        for uid in range(1, 201):
            assert bytes(await loader.content(uid)) == message(uid)
        assert sorted(u for batch in upstream.batches for u in batch) == list(range(1, 201))
        assert len(upstream.batches) <= 200 // (READ_AHEAD // 2) + 2   # read ahead again, not one by one
    asyncio.run(main())


def test_random_access_reads_nothing_ahead():
    async def main():
        b, loader, upstream = box(100)
        for uid in range(100, 0, -10):
            assert bytes(await loader.content(uid)) == message(uid)
        assert upstream.batches == [[u] for u in range(100, 0, -10)]
    asyncio.run(main())


def test_big_messages_are_read_ahead_within_their_budget_and_held_for_one_read():
    async def main():
        sizes = {u: (CACHE_LARGEST + 1 if u % 2 == 0 else 500) for u in range(1, 41)}
        sizes[21] = AHEAD_BYTES + 1                      # never read ahead: asked for alone
        b, loader, upstream = box(40, sizes)
        held = 0
        for uid in range(1, 41):
            held += uid in loader._held
            expected = message(uid, sizes[uid] if sizes[uid] > CACHE_LARGEST else 0)
            assert bytes(await loader.content(uid)) == expected
            assert sum(sizes[u] for u in loader._big) <= AHEAD_BYTES
        assert held > 0                                  # some were decrypted before they were asked for
        fetched = [u for batch in upstream.batches for u in batch]
        assert sorted(fetched) == list(range(1, 41))     # each once: held ones are not fetched again
        assert [21] in upstream.batches
        assert any(u % 2 == 0 and len(batch) > 1 for batch in upstream.batches for u in batch)
        assert loader._held == {} and loader._big == {}  # every big one handed over, nothing kept
        assert all(b.parts.cache.get(("INBOX", 7, u)) is not None for u in range(1, 41, 2) if u != 21)
        assert all(b.parts.cache.get(("INBOX", 7, u)) is None for u in range(2, 41, 2))   # big: not kept
    asyncio.run(main())


def test_an_upstream_failure_reaches_the_client_and_the_next_ask_tries_again():
    async def main():
        b, loader, upstream = box(5)
        upstream.fail = True
        with pytest.raises(OSError):
            await loader.content(3)
        upstream.fail = False
        assert bytes(await loader.content(3)) == message(3)
    asyncio.run(main())


SHAPES = {
    "text": b"From: a@x.fr\r\nTo: b@y.fr\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n",
    "empty body": b"From: a@x.fr\r\nSubject: nothing\r\n\r\n",
    "mixed with an attachment": (
        b"From: a@x.fr\r\nSubject: doc\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"d.bin\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b"QUJD" * 19 + b"\r\n" + b"REVG\r\n" * 3000 + b"--b1--\r\nepilogue\r\n"),
    "nested message": (
        b"From: a@x.fr\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\n"
        b"Content-Type: message/rfc822\r\n\r\nFrom: c@z.fr\r\nSubject: inner\r\nContent-Type: multipart/alternative;"
        b" boundary=\"i\"\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\nplain\r\n--i\r\nContent-Type: text/html\r\n\r\n"
        b"<p>html</p>\r\n--i--\r\n\r\n--o--\r\n"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_what_the_event_loop_restores_answers_as_pymap_parsed_it(shape):
    raw = SHAPES[shape]
    shown, meta = shown_with_structure(lambda r: r, raw)
    assert len(meta) < 4000                                    # no tuple per line crosses from the reader
    parsed, (restored, _) = MessageContent.parse(raw), restore(shown, meta)
    a, b = (BaseLoadedMessage(None, FetchRequirement.CONTENT, c) for c in (parsed, restored))
    assert bytes(restored) == raw and restored.lines == parsed.lines and len(restored) == len(parsed)
    assert bytes(b.get_body()) == bytes(a.get_body()) and b.get_size() == a.get_size()
    assert not restored.restored   # BODY[] and its size (what a syncing client asks) need no parts
    assert bytes(b.get_body_structure()) == bytes(a.get_body_structure())
    assert bytes(b.get_envelope_structure()) == bytes(a.get_envelope_structure())
    for section in (None, [1], [2], [1, 1], [1, 2], [2, 1]):
        assert b.get_size(section) == a.get_size(section)
        assert bytes(b.get_body(section)) == bytes(a.get_body(section))
        assert bytes(b.get_body(section, binary=True)) == bytes(a.get_body(section, binary=True))
        assert bytes(b.get_message_headers(section)) == bytes(a.get_message_headers(section))
        assert bytes(b.get_message_text(section)) == bytes(a.get_message_text(section))
