"""Submission users: scrypt password hashes in a 0600 file in the gateway home."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import ConfigError, UsageError
from .home import write_atomic

log = logging.getLogger(__name__)

_N, _R, _P = 2 ** 14, 8, 1
# Checked for an unknown user or a malformed entry: one scrypt of the same cost, so the
# time of an answer does not tell whether the account exists. Nothing hashes to zeros.
_DUMMY = f"scrypt${base64.b64encode(bytes(16)).decode()}${base64.b64encode(bytes(32)).decode()}"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored``; always one scrypt, even for a malformed entry."""
    try:
        scheme, salt, digest = stored.split("$")
        want, salt_bytes = base64.b64decode(digest), base64.b64decode(salt)
        usable = scheme == "scrypt" and len(want) == 32
    except (ValueError, TypeError):
        usable = False
    if not usable:
        want, salt_bytes = bytes(32), bytes(16)
    got = hashlib.scrypt(password.encode("utf-8", "replace"), salt=salt_bytes, n=_N, r=_R, p=_P, dklen=32)
    return hmac.compare_digest(want, got) and usable


class Users:
    """``user:hash`` lines; read at start-up and again when the file changes.

    Each serve process holds its own ``Users``: a check (in the AuthGuard's
    threads) or ``known`` looks at the file's (mtime_ns, size, inode) at most
    once per ``recheck`` seconds and rereads it when that changed, so users
    added, changed or removed by ``securemail gateway user`` count within
    seconds, with no restart. Writers replace the file whole (write, fsync,
    rename), so a reader sees the old list or the new one, never half of it.
    A file made unreadable by hand keeps the last good list (logged).
    """

    def __init__(self, path: Path, *, recheck: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.recheck, self.clock = path, recheck, clock
        self._refreshing = threading.Lock()
        self._stamp, self._entries = self._read()
        self._next = clock() + recheck

    def _read(self) -> tuple[tuple[int, int, int] | None, dict[str, str]]:
        """The file's stamp and entries, both from one open file (a rename in between cannot mix them)."""
        try:
            f = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return None, {}
        with f:
            st = os.fstat(f.fileno())
            return (st.st_mtime_ns, st.st_size, st.st_ino), self._parse(f.read())

    def _parse(self, text: str) -> dict[str, str]:
        out = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep:
                raise ConfigError(f"{self.path.name} line {n}: expected user:hash")
            out[user.strip().lower()] = stored.strip()
        return out

    def refresh(self) -> None:
        """Reread the file if it changed; at most one stat per ``recheck`` seconds, never waits."""
        if self.clock() < self._next or not self._refreshing.acquire(blocking=False):
            return
        try:
            self._next = self.clock() + self.recheck
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp:
                return
            try:
                self._stamp, entries = self._read()
            except (ConfigError, OSError, UnicodeDecodeError) as e:
                self._stamp = stamp  # logged once per change of the file, not per check
                log.error("%s unreadable, keeping the previous users: %s", self.path.name,
                          getattr(e, "message", None) or type(e).__name__)
                return
            self._entries = entries  # one reference swap: a check sees the old dict or the new
            log.info("%s reread: %d users", self.path.name, len(entries))
        finally:
            self._refreshing.release()

    def check(self, user: str, password: bytes | str) -> bool:
        """Blocking (one scrypt, ~50 ms): call it off the event loop. An unknown user costs the same."""
        self.refresh()
        stored = self._entries.get(user.strip().lower())
        pw = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        return check_password(_DUMMY if stored is None else stored, pw) and stored is not None

    def known(self, user: str) -> bool:
        """Whether ``user`` still has an account (no scrypt; a stat at most once per ``recheck``)."""
        self.refresh()
        return user.strip().lower() in self._entries

    def set(self, user: str, password: str) -> None:
        if not user or ":" in user or "\n" in user:
            raise UsageError("bad user name")
        if len(password) < 8:
            raise UsageError("passwords must have at least 8 characters")
        stored = hash_password(password)
        with self._writing():
            self._entries[user.strip().lower()] = stored

    def remove(self, user: str) -> bool:
        with self._writing():
            found = self._entries.pop(user.strip().lower(), None) is not None
        return found

    def names(self) -> list[str]:
        self.refresh()
        return sorted(self._entries)

    @contextmanager
    def _writing(self):
        """Read, change, replace the file under a lock: two ``user add`` at once both land."""
        lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._stamp, self._entries = self._read()
            yield
            write_atomic(self.path, "".join(f"{u}:{h}\n" for u, h in sorted(self._entries.items())).encode(),
                         0o600)
        finally:
            os.close(lock)
