"""bridge/selected.py's ``Selected`` answers every end of command as pymap's SelectedMailbox does:
both run side by side through random sessions (new mail, flag changes, expunges held back during
a FETCH, session flags, \\Recent, silenced STOREs, a deleted folder) and each fork's untagged
responses and resulting view are compared; and a fork after nothing costs no copy of the view."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from types import SimpleNamespace

from pymap.flags import FlagOp, SessionFlags
from pymap.parsing.specials import ObjectId, SequenceSet
from pymap.parsing.specials.flag import Flag
from pymap.selected import SelectedMailbox

from securemail.bridge.mailbox import Message
from securemail.bridge.selected import Selected

FLAGS = [Flag(b"\\Seen"), Flag(b"\\Flagged"), Flag(b"\\Deleted"), Flag(b"\\Answered")]
WHEN = datetime(2026, 12, 3, tzinfo=timezone.utc)


def view(selected) -> list:
    """(sequence number, UID, flags) of every message the session sees."""
    every = SequenceSet.build(range(1, 10_000), uid=True)
    return [(seq, m.uid, sorted(f.value for f in m.permanent_flags)) for seq, m in selected.messages.get_all(every)]


class Pair:
    """The same session as pymap's SelectedMailbox and as ours."""

    def __init__(self) -> None:
        mailbox_id = ObjectId.random_mailbox_id()
        self.views = [cls(mailbox_id, False, frozenset(FLAGS), SessionFlags(frozenset({Flag(b"$Local")})))
                      for cls in (SelectedMailbox, Selected)]
        self.uids: dict[int, frozenset] = {}   # the folder: uid -> flags
        self.next_uid = 1

    def each(self, act) -> None:
        for v in self.views:
            act(v)

    def fork(self, uid: bool) -> None:
        out = []
        for i, v in enumerate(self.views):
            self.views[i], untagged = v.fork(SimpleNamespace(uid=uid))
            out.append([bytes(r) for r in untagged])
        assert out[0] == out[1]
        assert view(self.views[0]) == view(self.views[1])

    def step(self, rng: random.Random) -> None:
        kind = rng.choice(["new", "flags", "expunge", "expunge-in-fetch", "session", "recent", "silence", "none"])
        if kind == "new":
            new = [Message(self.next_uid + i, WHEN, rng.sample(FLAGS, rng.randrange(0, 3)), None)
                   for i in range(rng.randrange(1, 4))]
            self.next_uid += len(new)
            self.uids.update({m.uid: m.permanent_flags for m in new})
            self.each(lambda v: v.add_updates(new, []))
        elif kind == "flags" and self.uids:
            uid = rng.choice(list(self.uids))
            msg = Message(uid, WHEN, rng.sample(FLAGS, rng.randrange(0, 3)), None)
            self.uids[uid] = msg.permanent_flags
            self.each(lambda v: v.add_updates([msg], []))
        elif kind.startswith("expunge") and self.uids:
            gone = rng.sample(list(self.uids), min(len(self.uids), rng.randrange(1, 3)))
            for uid in gone:
                del self.uids[uid]
            hide = kind == "expunge-in-fetch"
            for v in self.views:
                v.hide_expunged = hide
                v.add_updates([], gone)
        elif kind == "session" and self.uids:
            uid, op = rng.choice(list(self.uids)), rng.choice([FlagOp.ADD, FlagOp.DELETE, FlagOp.REPLACE])
            self.each(lambda v: v.session_flags.update(uid, [Flag(b"$Local")], op))
        elif kind == "recent" and self.uids:
            uid = rng.choice(list(self.uids))
            self.each(lambda v: v.session_flags.add_recent(uid))
        elif kind == "silence" and self.uids:
            uid = rng.choice(list(self.uids))
            flag = rng.choice(FLAGS)
            self.uids[uid] = self.uids[uid] | {flag}
            msg = Message(uid, WHEN, self.uids[uid], None)
            seq_set = SequenceSet.build([uid], uid=True)
            self.each(lambda v: (v.silence(seq_set, frozenset({flag}), FlagOp.ADD), v.add_updates([msg], [])))
        for v in self.views:   # what the bridge's update_selected does at every command
            v.add_updates([], [])


def test_every_fork_answers_as_pymaps():
    rng = random.Random(11)
    forks = 0
    for _ in range(60):
        pair = Pair()
        for _ in range(rng.randrange(5, 60)):
            for _ in range(rng.randrange(0, 3)):
                pair.step(rng)
            pair.fork(uid=rng.random() < 0.5)
            forks += 1
        if rng.random() < 0.2:
            pair.each(lambda v: v.set_deleted())
            pair.fork(uid=True)
    assert forks > 1000


def test_a_fork_after_nothing_copies_nothing():
    pair = Pair()
    new = [Message(uid, WHEN, [FLAGS[uid % 2]], None) for uid in range(1, 2001)]
    pair.each(lambda v: v.add_updates(new, []))
    pair.fork(uid=True)
    ours = pair.views[1]
    snapshot = ours._prev
    pair.fork(uid=True)                      # nothing happened: the same snapshot serves
    assert pair.views[1]._prev is snapshot
    changed = Message(7, WHEN, [Flag(b"\\Flagged")], None)
    pair.each(lambda v: v.add_updates([changed], []))
    pair.fork(uid=True)                      # a change: compared in full, as pymap does
    assert pair.views[1]._prev is not snapshot
