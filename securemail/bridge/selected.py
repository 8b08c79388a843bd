"""A client's view of its selected folder: pymap's SelectedMailbox, whose end of command costs
nothing when nothing changed.

After every command pymap ``fork``s the session's SelectedMailbox: it copies the whole view
(every UID, sequence number and flag set: ``_Frozen``) and compares it with the copy made after
the command before, to find the untagged EXPUNGE, EXISTS and FETCH responses the client is owed.
A client that syncs sends one command per message, so a full sync of a folder of n messages did
n copies of n: 0.03 ms a command for 1,000 messages, 0.8 ms for 10,000, about 5 ms for 50,000.

``Selected`` notes whether anything that copy holds can have changed since the last fork: new,
changed or expunged messages (``add_updates``, ``set_messages``), expunges held back during a
FETCH (applied by the next update), flags silenced by a STORE, the folder deleted, the
session's own flags (\\Recent, session-only flags: compared directly, they are few). When none
has, the last copy is the state, the comparison would find nothing, and ``fork`` hands on that
copy with no responses. Otherwise it forks as pymap does. tests/unit/test_bridge_selected.py
runs both side by side through random sessions and compares every response they give.
"""

from __future__ import annotations

from collections.abc import Iterable

from pymap.selected import SelectedMailbox


class Selected(SelectedMailbox):
    __slots__ = ["_changed"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._changed = True   # a new view: compared in full at its first fork

    def add_updates(self, messages: Iterable, expunged: Iterable[int]) -> None:
        messages, expunged = list(messages), list(expunged)
        if messages or expunged or self._messages._pending_remove:
            self._changed = True
        super().add_updates(messages, expunged)

    def set_deleted(self) -> None:
        self._changed = True
        super().set_deleted()

    def silence(self, seq_set, flag_set, flag_op) -> None:
        self._changed = True
        super().silence(seq_set, flag_set, flag_op)

    def _unchanged(self) -> bool:
        before = self._prev
        if self._changed or before is None or self._is_deleted:
            return False
        flags = self._session_flags
        return (frozenset(flags.flags.items()) == before.sflags
                and (flags.recent_uids & before.uids) == before.recent
                and len(self._messages._uids) == len(before.uids))

    def fork(self, command):
        if self._unchanged():
            copy = type(self)(self._mailbox_id, self._readonly, self._permanent_flags, self._session_flags,
                              self._selected_set, self._lookup, _mod_sequence=self._mod_sequence,
                              _prev=self._prev, _messages=self._messages)
            copy._changed = False
            return copy, []
        copy, untagged = super().fork(command)
        copy._changed = False
        return copy, untagged
