"""One upstream folder as the bridge shows it: pymap's MailboxDataInterface over the upstream server.

UIDs and UIDVALIDITY are the upstream's own, so they stay the same across restarts of the
bridge and a mail client never resyncs because the bridge restarted. What is kept here is the
list of messages (UID, flags, internal date), refreshed from upstream (CONDSTORE's CHANGEDSINCE
when the server has it) at SELECT, STATUS, NOOP and when the upstream announces a change during
a client's IDLE; every change a client makes (flags, copy, move, expunge, append) is made
upstream first. The content a client fetches is decrypted on demand (view.py), off the event
loop, and kept in the size-limited memory cache (cache.py); nothing decrypted is written to disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

from pymap.concurrent import Event
from pymap.exceptions import AppendFailure
from pymap.flags import FlagOp
from pymap.mailbox import MailboxSnapshot
from pymap.message import BaseLoadedMessage, BaseMessage
from pymap.mime import MessageContent
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import FetchRequirement, ObjectId
from pymap.parsing.specials.flag import Flag, Recent, Seen
from pymap.selected import SelectedMailbox, SelectedSet

from ..errors import SecureMailError
from .cache import ViewCache
from .loader import Loader
from .upstream import Upstream, new_uid

FETCH_BATCH = 5000   # UIDs named in one upstream FETCH
WATCH_GRACE = 30.0   # seconds an upstream IDLE outlives the last client idling on the folder


@dataclass
class Parts:
    """What every folder of one bridge shares."""
    upstream: Upstream
    submit: Callable[[bytes], Awaitable]  # upstream message -> future (shown, structure): readers.py
    seal: Callable[[bytes], bytes]       # a client's APPEND -> what is stored upstream (encrypted)
    cache: ViewCache                     # whole messages shown
    headers: ViewCache                   # header blocks of messages not kept whole (too big, pushed out)
    run_cpu: Callable                    # (fn, *args) -> awaitable: crypto off the event loop


class Message(BaseMessage):
    __slots__ = ["_box"]

    def __init__(self, uid: int, when: datetime, flags: Iterable[Flag], box: "Mailbox", *,
                 expunged: bool = False) -> None:
        super().__init__(uid, when, flags, expunged=expunged)
        self._box = box

    def copy(self, *, expunged: bool = False, flags=None) -> "Message":
        return Message(self.uid, self.internal_date, self.permanent_flags if flags is None else flags,
                       self._box, expunged=expunged)

    async def load_content(self, requirement: FetchRequirement) -> BaseLoadedMessage:
        content = None
        if not self.expunged and requirement.has_all(FetchRequirement.BODY):
            content = await self._box.content(self.uid)
        elif not self.expunged and requirement.has_all(FetchRequirement.HEADER):
            content = await self._box.header(self.uid)
        return BaseLoadedMessage(self, requirement, content)


class Changes:
    """Which UIDs changed or went at which modification count (what pymap's selected sessions ask).

    Each dict is kept in the order of its counts (a UID changed again moves to the end), so
    ``since`` reads back from the end only as far as the changes asked for: a client's every
    command asks, and a walk over the whole folder made a full sync cost the square of its size."""

    def __init__(self) -> None:
        self.highest = 0
        self._updated: dict[int, int] = {}
        self._expunged: dict[int, int] = {}

    def updated(self, uids: Iterable[int]) -> None:
        self.highest += 1
        for uid in uids:
            self._updated.pop(uid, None)
            self._updated[uid] = self.highest

    def expunged(self, uids: Iterable[int]) -> None:
        self.highest += 1
        for uid in uids:
            self._updated.pop(uid, None)
            self._expunged.pop(uid, None)
            self._expunged[uid] = self.highest

    def since(self, count: int) -> tuple[list[int], list[int]]:
        return _after(self._updated, count), _after(self._expunged, count)


def _after(counts: dict[int, int], count: int) -> list[int]:
    """The UIDs of ``counts`` (in ascending order of their counts) whose count is above ``count``."""
    found = []
    for uid, at in reversed(counts.items()):
        if at <= count:
            break
        found.append(uid)
    found.reverse()
    return found


def _flags(raw: Iterable[bytes]) -> frozenset[Flag]:
    return frozenset(Flag(f) for f in raw if f.lower() != b"\\recent")


class Mailbox:
    """pymap's MailboxDataInterface for the upstream folder ``name``."""

    def __init__(self, name: str, parts: Parts, new_event: Callable[[], Event]) -> None:
        self.name, self.parts = name, parts
        self.mailbox_id = ObjectId.random_mailbox_id()
        self.readonly = False
        self.uid_validity = 0
        self.selected_set = SelectedSet()
        self.messages: dict[int, Message] = {}
        self.changes = Changes()
        self.modseq: int | None = None
        self.next_uid = 1
        self._updated = new_event()
        self._refreshing = asyncio.Lock()
        self.sizes: dict[int, int] = {}   # UID -> the upstream's RFC822.SIZE (what read-ahead may take)
        self._uids: list[int] | None = None   # the UIDs in order, until the list changes
        self.loader = Loader(self)
        self._idlers, self._watch, self._unwatch = 0, None, None

    @property
    def uids(self) -> list[int]:
        """The folder's UIDs in order (what read-ahead walks), made again only when the list changes."""
        if self._uids is None:
            self._uids = list(self.messages)
        return self._uids

    permanent_flags = property(lambda self: frozenset({Flag(b"\\Seen"), Flag(b"\\Answered"), Flag(b"\\Flagged"),
                                                       Flag(b"\\Deleted"), Flag(b"\\Draft")}))
    session_flags = property(lambda self: frozenset({Recent}))

    # --- the message list, from upstream ------------------------------------------------
    async def refresh(self) -> None:
        async with self._refreshing:
            info = await self.parts.upstream.select(self.name)
            validity, exists = int(info[b"UIDVALIDITY"]), int(info[b"EXISTS"])
            modseq = info.get(b"HIGHESTMODSEQ")
            self.next_uid = int(info.get(b"UIDNEXT", self.next_uid))
            if validity != self.uid_validity:
                self._reset(validity)
            elif modseq is not None and modseq == self.modseq and exists == len(self.messages):
                return
            since = self.modseq if modseq is not None and self.modseq is not None else None
            alive, found = await self.parts.upstream.run(self.name, lambda c: _fetch_flags(c, exists, since))
            self._drop([u for u in self.messages if u not in alive])
            self._merge(found)
            self.modseq = modseq
            self._updated.set()

    def _reset(self, validity: int) -> None:
        self._drop(list(self.messages))
        self.uid_validity, self.modseq = validity, None
        self.loader.forget()

    def _merge(self, found: dict) -> None:
        changed = []
        for uid, item in found.items():
            if b"RFC822.SIZE" in item:
                self.sizes[uid] = int(item[b"RFC822.SIZE"])
            flags = _flags(item.get(b"FLAGS", ()))
            old = self.messages.get(uid)
            if old is not None and old.permanent_flags == flags:
                continue
            when = item.get(b"INTERNALDATE") or (old.internal_date if old else datetime.now(timezone.utc))
            self.messages[uid] = Message(uid, when, flags, self)
            changed.append(uid)
        if changed:
            self.messages = dict(sorted(self.messages.items()))
            self._uids = None
            self.changes.updated(changed)

    def _drop(self, uids: list[int]) -> None:
        for uid in uids:
            self.messages.pop(uid, None)
            self._uids = None
            self.sizes.pop(uid, None)
            self.parts.cache.discard((self.name, self.uid_validity, uid))
        if uids:
            self.changes.expunged(uids)
            self._updated.set()

    # --- what pymap asks ---------------------------------------------------------------------
    async def update_selected(self, selected: SelectedMailbox, *, wait_on: Event | None = None) -> SelectedMailbox:
        if wait_on is not None:
            either = wait_on.or_event(self._updated)
            self._idle_begins()
            try:
                await either.wait()
            finally:
                self._idle_ends()
        last = selected.mod_sequence
        selected.mod_sequence = self.changes.highest
        if last is None:
            selected.add_updates(list(self.messages.values()), [])
        else:
            updated, expunged = self.changes.since(last)
            selected.add_updates([self.messages[u] for u in updated if u in self.messages], expunged)
        return selected

    async def snapshot(self) -> MailboxSnapshot:
        await self.refresh()
        unseen = [i for i, m in enumerate(self.messages.values(), 1) if Seen not in m.permanent_flags]
        return MailboxSnapshot(self.mailbox_id, self.readonly, self.uid_validity, self.permanent_flags,
                               self.session_flags, len(self.messages), 0, len(unseen),
                               unseen[0] if unseen else None, self.next_uid)

    async def get(self, uid: int, cached_msg) -> Message:
        msg = self.messages.get(uid)
        if msg is None:
            return Message(uid, cached_msg.internal_date, cached_msg.permanent_flags, self, expunged=True)
        return msg

    async def update(self, uid: int, cached_msg, flag_set: frozenset[Flag], mode: FlagOp) -> Message:
        msg = await self.get(uid, cached_msg)
        if msg.expunged:
            return msg
        flags = [f.value for f in flag_set]
        op = {FlagOp.ADD: "add_flags", FlagOp.DELETE: "remove_flags"}.get(mode, "set_flags")
        result = await self.parts.upstream.run(self.name, lambda c: getattr(c, op)([uid], flags))
        now = _flags(result.get(uid, ())) if uid in result else mode.apply(msg.permanent_flags, flag_set)
        self.messages[uid] = msg = msg.copy(flags=now)
        self.changes.updated([uid])
        self._updated.set()
        return msg

    async def append(self, append_msg: AppendMessage, *, recent: bool = False) -> Message:
        try:
            sealed = await self.parts.run_cpu(self.parts.seal, bytes(append_msg.literal))
        except SecureMailError as e:
            raise AppendFailure(self.name, f"not stored: {e.message}".encode()) from None
        flags = [f.value for f in append_msg.flag_set if f != Recent]
        when = append_msg.when
        resp = await self.parts.upstream.run(None, lambda c: c.append(self.name, sealed, flags, when))
        await self.refresh()
        uid = new_uid(resp) or max(self.messages, default=0)
        return self.messages.get(uid) or Message(uid, when or datetime.now(timezone.utc), append_msg.flag_set, self)

    async def copy(self, uid: int, destination: "Mailbox", *, recent: bool = False) -> int | None:
        if uid not in self.messages:
            return None
        resp = await self.parts.upstream.run(self.name, lambda c: c.copy([uid], destination.name))
        await destination.refresh()
        return new_uid(resp)

    async def move(self, uid: int, destination: "Mailbox", *, recent: bool = False) -> int | None:
        if uid not in self.messages:
            return None
        resp = await self.parts.upstream.run(self.name, lambda c: c.move([uid], destination.name))
        self._drop([uid])
        await destination.refresh()
        return new_uid(resp)

    async def delete(self, uids: Iterable[int]) -> None:
        uids = [u for u in uids if u in self.messages]
        if uids:
            await self.parts.upstream.run(self.name, lambda c: _expunge(c, uids))
            self._drop(uids)

    async def claim_recent(self, selected: SelectedMailbox) -> None:
        pass  # \\Recent is not kept: IMAP4rev2 dropped it, and the upstream's belongs to its own sessions

    async def cleanup(self) -> None:
        pass

    async def find(self, seq_set, selected: SelectedMailbox):
        for seq, cached_msg in selected_messages(selected.messages, seq_set):
            yield seq, await self.get(cached_msg.uid, cached_msg)

    async def find_deleted(self, seq_set, selected: SelectedMailbox) -> list[int]:
        return [msg.uid async for _, msg in self.find(seq_set, selected)
                if not msg.expunged and Flag(b"\\Deleted") in msg.permanent_flags]

    # --- content: fetched, decrypted by the readers, kept in memory (loader.py) ------------
    async def content(self, uid: int) -> MessageContent | None:
        return await self.loader.content(uid)

    async def header(self, uid: int) -> MessageContent | None:
        key = (self.name, self.uid_validity, uid)
        found = self.parts.headers.get(key)
        if found is None:
            found = self.parts.cache.get(key)   # a message kept whole is its own header
        return found if found is not None else await self.content(uid)

    # --- an upstream IDLE while a client idles on this folder -----------------------------
    def _idle_begins(self) -> None:
        self._idlers += 1
        if self._unwatch is not None:
            self._unwatch.cancel()
            self._unwatch = None
        if self._watch is None:
            self._watch = self.parts.upstream.watch(self.name, self._upstream_changed)

    def _idle_ends(self) -> None:
        self._idlers -= 1
        if self._idlers == 0 and self._watch is not None and self._unwatch is None:
            self._unwatch = asyncio.get_running_loop().call_later(WATCH_GRACE, self.stop_watching)

    def stop_watching(self) -> None:
        self._unwatch = None
        if self._watch is not None and self._idlers == 0:
            self._watch.stop()
            self._watch = None

    def _upstream_changed(self) -> None:
        asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:  # noqa: BLE001 - the next command or push tries again
            pass


def selected_messages(messages, seq_set) -> list[tuple[int, object]]:
    """``messages.get_all(seq_set)`` (pymap's SynchronizedMessages: what a session has seen), read
    from its UID -> sequence number index instead of a walk over every message: a syncing client
    sends a command per message, and the walk made a full sync cost the square of the folder's
    size. tests/unit/test_bridge_changes.py holds it to ``get_all``."""
    if seq_set.uid:
        uids, seqs = seq_set.flatten(messages.max_uid) & messages._uids, messages._seqs_cache
        return [(seqs[uid], messages._cache[uid]) for uid in sorted(uids)]
    order, exists = messages._sorted, messages.exists
    return [(seq, messages._cache[order[seq - 1]]) for seq in sorted(seq_set.flatten(exists)) if 0 < seq <= exists]


def _fetch_flags(client, exists: int, since: int | None) -> tuple[set[int], dict]:
    """(every UID in the folder, {uid: FLAGS and INTERNALDATE} of those changed since ``since``
    (CONDSTORE), or of all). IMAPClient wants UIDs, not ``1:*``: they come from one SEARCH."""
    uids = client.search("ALL") if exists else []
    modifiers = [f"CHANGEDSINCE {since}"] if since is not None else None
    found: dict = {}
    for i in range(0, len(uids), FETCH_BATCH):
        found.update(client.fetch(uids[i:i + FETCH_BATCH], ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
                                  modifiers=modifiers))
    return set(uids), found


def _expunge(client, uids: list[int]) -> None:
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()
