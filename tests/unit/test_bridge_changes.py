"""The bridge's per-command bookkeeping, made proportional to what changed, answers as before:
``Changes.since`` as a walk over every UID, ``selected_messages`` as pymap's ``get_all``."""

from __future__ import annotations

import random
from datetime import datetime, timezone

from pymap.flags import SessionFlags
from pymap.parsing import Params
from pymap.parsing.specials import ObjectId, SequenceSet
from pymap.parsing.specials.flag import Flag
from pymap.selected import SelectedMailbox

from securemail.bridge.mailbox import Changes, Message, selected_messages


def test_changes_since_answers_as_a_walk_over_every_uid():
    rng, changes = random.Random(5), Changes()
    updated, expunged = {}, {}   # the model: uid -> count, as the walk read them
    for _ in range(3000):
        uids = rng.sample(range(1, 60), rng.randrange(1, 5))
        if rng.random() < 0.75:
            changes.updated(uids)
            updated.update({u: changes.highest for u in uids})
        else:
            changes.expunged(uids)
            for u in uids:
                updated.pop(u, None)
                expunged[u] = changes.highest
        count = rng.randrange(0, changes.highest + 1)
        got = changes.since(count)
        assert sorted(got[0]) == sorted(u for u, c in updated.items() if c > count)
        assert sorted(got[1]) == sorted(u for u, c in expunged.items() if c > count)
    assert changes.since(0)[0] and changes.since(changes.highest) == ([], [])


def _selected(rng: random.Random) -> SelectedMailbox:
    selected = SelectedMailbox(ObjectId.random_mailbox_id(), False, frozenset({Flag(b"\\Seen")}),
                               SessionFlags(frozenset()))
    uids = sorted(rng.sample(range(1, 400), 120))
    when = datetime.now(timezone.utc)
    selected.add_updates([Message(u, when, (), None) for u in uids], [])
    gone = rng.sample(uids, 20)
    selected.add_updates([Message(u, when, (), None) for u in rng.sample(range(400, 450), 10)], gone)
    return selected


def test_selected_messages_answers_as_pymaps_get_all():
    rng = random.Random(7)
    for _ in range(40):
        messages = _selected(rng).messages
        for _ in range(25):
            uid = rng.random() < 0.5
            top = 460 if uid else messages.exists + 5
            a = rng.randrange(1, top)
            spec = rng.choice([f"{a}", f"{a}:*", f"{a}:{rng.randrange(1, top)}", "*", "1:*",
                               f"{a},{rng.randrange(1, top)}:{rng.randrange(1, top)}"])
            parsed = SequenceSet.parse(memoryview(spec.encode()), Params())[0]
            seq_set = SequenceSet(parsed.sequences, uid=uid)
            assert [(s, m.uid) for s, m in selected_messages(messages, seq_set)] == \
                   [(s, m.uid) for s, m in messages.get_all(seq_set)], spec
