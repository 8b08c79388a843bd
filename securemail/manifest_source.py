"""The installed federation manifest while the gateway runs: re-read when its file changes, with
the member keys it lists (retiring ones during a rotation) and the time left before it expires."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .crypto.keys import Key, load_key
from .federation import load_installed

log = logging.getLogger(__name__)

class ManifestSource:
    """The installed federation manifest; re-read when its file changes (cheap stat per call)."""

    def __init__(self, path: Path, clock=time.time) -> None:
        self.path, self.clock = path, clock  # clock: for seconds_to_expiry
        self._stamp: tuple[float, int] | None = None
        self._manifest = None
        self._keys: dict = {}  # domain, or (domain, "retiring") -> Key or None

    def __call__(self):
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._manifest = load_installed(self.path) if stamp else None
            self._keys = {}
            self._stamp = stamp
            log.info("federation manifest %s", f"serial {self._manifest.serial}" if self._manifest else "absent")
        return self._manifest

    def seconds_to_expiry(self) -> float | None:
        """Seconds until the installed manifest expires (<= 0: expired); None: no manifest, no expiry."""
        m = self()
        return None if m is None or m.expires_at is None else m.expires_at - self.clock()

    def expired(self) -> bool:
        left = self.seconds_to_expiry()
        return left is not None and left <= 0

    def member_key(self, domain: str) -> Key | None:
        """The member domain's gateway key, parsed once per manifest; None if unusable."""
        m = self()
        if m is None or not m.is_member(domain):
            return None
        if domain not in self._keys:
            self._keys[domain] = _key_or_none(m.member(domain).openpgp_key, domain)
        return self._keys[domain]

    def member_keys(self, domain: str) -> list[Key]:
        """Every gateway key the manifest lists for ``domain``: its key, and the retiring one."""
        m = self()
        member = m.member(domain) if m is not None else None
        if member is not None and member.retiring_key and (domain, "retiring") not in self._keys:
            self._keys[(domain, "retiring")] = _key_or_none(member.retiring_key, domain)
        return [k for k in (self.member_key(domain), self._keys.get((domain, "retiring"))) if k]

    def lookup(self, keyid: str, fpr: str | None) -> Key | None:
        m = self()
        for domain in (m.members if m else {}):
            for key in self.member_keys(domain):
                if (fpr and fpr == key.fingerprint) or keyid in key.keyids:
                    return key
        return None


def _key_or_none(armored: bytes, domain: str) -> Key | None:
    try:
        return load_key(armored)
    except Exception:  # noqa: BLE001 - a broken entry must not break other domains
        log.warning("member %s has an unusable OpenPGP key in the manifest", domain)
        return None
