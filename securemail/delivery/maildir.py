"""Local delivery into a Maildir: write tmp/, fsync, rename into new/, fsync the directory.

Each address has its own Maildir ``<root>/<address>/{tmp,new,cur}`` where
``root`` is normally ``<home>/Maildir``. The address is the directory name, so
it is lowercased and refused if it could leave ``root`` (path separators,
``..``, a leading dot, control characters). Directories are created 0700 and
messages 0600. A message is in ``new/`` only once its bytes and the rename are
on disk; a failure leaves at most a file in ``tmp/`` and is temporary.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from securemail.delivery.outcome import DELIVERED, Outcome, permanent, temporary
from securemail.home import write_atomic

log = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "cur")
DELIVERED_TEXT = "delivered to local mailbox"
BAD_MAILBOX = "invalid local mailbox name"
UNAVAILABLE = "local mailbox temporarily unavailable"
_counter = itertools.count()


def mailbox_name(address: str) -> str | None:
    """The directory name for ``address``, or None if it is not safe to use as one."""
    name = address.strip().lower()
    if (not name or name.startswith(".") or ".." in name or "/" in name or "\\" in name
            or any(ord(c) < 32 or c == "\x7f" for c in name) or len(name) > 255):
        return None
    return name


def deliver_maildir(root: Path, address: str, body: bytes, *,
                    clock: Callable[[], float] = time.time,
                    hostname: str | None = None) -> Outcome:
    """Deliver ``body`` to ``address``'s Maildir under ``root``; blocking (run it in a thread)."""
    name = mailbox_name(address)
    if name is None:
        log.warning("maildir: refused mailbox name %r", address)
        return permanent(BAD_MAILBOX)
    box = Path(root) / name
    try:
        os.makedirs(root, 0o700, exist_ok=True)  # may be a symlink the operator placed
        for d in (box, *(box / s for s in SUBDIRS)):
            _directory(d)
        unique = _unique(clock(), hostname or socket.gethostname())
        tmp, new = box / "tmp" / unique, box / "new" / unique
        write_atomic(new, body, 0o600, tmp=tmp)
    except OSError as err:
        log.error("maildir: delivery to %s failed: %s", name, err)
        return temporary(UNAVAILABLE)
    log.info("maildir: delivered %d bytes to %s", len(body), name)
    return Outcome(DELIVERED, None, DELIVERED_TEXT)


def _directory(path: Path) -> None:
    """Create ``path`` 0700 if missing; refuse a symlink or non-directory in its place."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")


def _unique(now: float, hostname: str) -> str:
    """A Maildir file name: ``time.M<usec>P<pid>Q<n>R<random>.<host>`` (host without / or :); the
    microseconds have six digits, so that names sort in delivery order (readers list by name)."""
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    sec, usec = int(now), int((now % 1) * 1_000_000)
    return f"{sec}.M{usec:06d}P{os.getpid()}Q{next(_counter)}R{uuid.uuid4().hex[:12]}.{host}"
