"""Decrypted messages in memory, within a byte budget: the only place plaintext is kept.

A least-recently-used map from (folder, UIDVALIDITY, UID) to the parsed message shown to
clients. Nothing of it is ever written to disk; it goes with the process. A message larger
than the whole budget is not kept (it is decrypted again when asked for again).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class ViewCache:
    def __init__(self, max_bytes: int, on_evict=None) -> None:
        self.max_bytes = max_bytes
        self.on_evict = on_evict   # (key, value) of what the budget pushed out (not of a discard)
        self.size = 0
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()

    def get(self, key: Hashable):
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: object, size: int) -> None:
        self.discard(key)
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.max_bytes:
            old, (value, dropped) = self._items.popitem(last=False)
            self.size -= dropped
            if self.on_evict is not None:
                self.on_evict(old, value)

    def discard(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.size -= item[1]

    def discard_folder(self, folder: str) -> None:
        for key in [k for k in self._items if k[0] == folder]:
            self.discard(key)

    def __len__(self) -> int:
        return len(self._items)
