"""Submission users: scrypt password hashes in a 0600 file in the gateway home."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from ..errors import ConfigError, UsageError

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
    """``user:hash`` lines; read once at start-up (and again on change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = self._load()

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        out = {}
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep:
                raise ConfigError(f"{self.path.name} line {n}: expected user:hash")
            out[user.strip().lower()] = stored.strip()
        return out

    def check(self, user: str, password: bytes | str) -> bool:
        """Blocking (one scrypt, ~50 ms): call it off the event loop. An unknown user costs the same."""
        stored = self._entries.get(user.strip().lower())
        pw = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        return check_password(_DUMMY if stored is None else stored, pw) and stored is not None

    def set(self, user: str, password: str) -> None:
        if not user or ":" in user or "\n" in user:
            raise UsageError("bad user name")
        if len(password) < 8:
            raise UsageError("passwords must have at least 8 characters")
        self._entries[user.strip().lower()] = hash_password(password)
        self._save()

    def remove(self, user: str) -> bool:
        found = self._entries.pop(user.strip().lower(), None) is not None
        self._save()
        return found

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{u}:{h}\n" for u, h in sorted(self._entries.items())))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
