"""The upstream folders as pymap's MailboxSetInterface: list, create, rename, delete, subscribe.

Every operation is the upstream's (the folder tree lives there only); the bridge keeps one
``Mailbox`` per folder a client opened, dropped when the folder is renamed or deleted. The
hierarchy delimiter is the upstream's (Dovecot's Maildir++ uses ``.``), so names pass through.
"""

from __future__ import annotations

from pymap.listtree import ListTree
from pymap.parsing.specials import ObjectId

from .mailbox import Mailbox, Parts
from .upstream import UpstreamError


class Folders:
    def __init__(self, parts: Parts, new_event) -> None:
        self.parts, self.new_event = parts, new_event
        self._boxes: dict[str, Mailbox] = {}
        self._delimiter = "/"

    @property
    def delimiter(self) -> str:
        return self._delimiter

    async def load(self) -> None:
        """Learn the upstream's delimiter (and that it answers) before the first client comes."""
        listed = await self.parts.upstream.run(None, lambda c: c.list_folders())
        for _, delimiter, _ in listed:
            if delimiter:
                self._delimiter = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
                break

    async def _names(self, subscribed: bool = False) -> list[str]:
        op = "list_sub_folders" if subscribed else "list_folders"
        listed = await self.parts.upstream.run(None, lambda c: getattr(c, op)())
        return [name for flags, _, name in listed if b"\\Noselect" not in flags and b"\\NonExistent" not in flags]

    async def list_mailboxes(self) -> ListTree:
        return ListTree(self.delimiter).update("INBOX", *(n for n in await self._names() if n.upper() != "INBOX"))

    async def list_subscribed(self) -> ListTree:
        names = [n for n in await self._names(subscribed=True) if n.upper() != "INBOX"]
        return ListTree(self.delimiter).update("INBOX", *names)

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        op = "subscribe_folder" if subscribed else "unsubscribe_folder"
        await self.parts.upstream.run(None, lambda c: getattr(c, op)(name))

    async def get_mailbox(self, name: str) -> Mailbox:
        name = "INBOX" if name.upper() == "INBOX" else name
        box = self._boxes.get(name)
        if box is None:
            if name != "INBOX" and name not in await self._names():
                raise KeyError(name)
            box = self._boxes[name] = Mailbox(name, self.parts, self.new_event)
        return box

    async def add_mailbox(self, name: str) -> ObjectId:
        if name.upper() == "INBOX" or name in await self._names():
            raise ValueError(name)
        await self.parts.upstream.run(None, lambda c: c.create_folder(name))
        return (await self.get_mailbox(name)).mailbox_id

    async def delete_mailbox(self, name: str) -> None:
        if name not in await self._names():
            raise KeyError(name)
        self._forget(name)
        await self.parts.upstream.run(None, lambda c: _unselected(c).delete_folder(name))

    async def rename_mailbox(self, before: str, after: str) -> None:
        names = await self._names()
        if before not in names and before.upper() != "INBOX":
            raise KeyError(before)
        if after in names:
            raise ValueError(after)
        self._forget(before)
        try:
            await self.parts.upstream.run(None, lambda c: _unselected(c).rename_folder(before, after))
        except UpstreamError as e:
            raise ValueError(after) from e

    def _forget(self, name: str) -> None:
        """Drop the folder and its children: their next use starts from the upstream again."""
        for n in [n for n in self._boxes if n == name or n.startswith(name + self.delimiter)]:
            self._boxes.pop(n).stop_watching()
            self.parts.cache.discard_folder(n)
        self.parts.upstream.forget_selections()

    def stop(self) -> None:
        for box in self._boxes.values():
            box.stop_watching()


def _unselected(client):
    """The connection with no folder selected, so that it may rename or delete any."""
    try:
        client.unselect_folder()
    except Exception:  # noqa: BLE001 - nothing was selected
        pass
    return client
