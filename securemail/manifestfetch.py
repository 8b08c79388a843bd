"""Manifest distribution: the running gateway fetches the authority's manifest from ``[federation] url``.

Once at start and then every ``fetch_interval``, one serve process of the home GETs the URL over
HTTPS whose certificate key must have ``url_pin`` (the SubjectPublicKeyInfo SHA-256, the check of
``keys/wkdfetch.py``; no CA is trusted, and the pin is checked before the request is sent). The
body is installed exactly as ``federation install`` installs a file (``federation.install``): signed
by the configured authority, serial moving forward, not expired, renamed into place atomically and
audited ``manifest-change`` with ``source`` the URL. Every process of the gateway (serve, crypto
workers, delivery) sees the new file at its next look (``ManifestSource``).

What is not installed is audited: a body refused (an older serial, the same serial with other
content, another signer, expired, malformed) as ``manifest-fetch-refused``; a fetch that failed
(network, pin, HTTP status, size) as ``manifest-fetch-failed``; each once per reason in a row, so
an unreachable authority writes one record, not one per interval. The installed manifest is
untouched by either; when it expires, member mail waits (policy ``manifest_current``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .audit import AuditLog
from .config_ops import ManifestFetch
from .crypto.keys import Key
from .errors import SecureMailError
from .federation import MAX_MANIFEST, ManifestInvalid, ManifestRefused, install, normalize_fpr
from .keys.wkdfetch import SpkiPin
from .periodic import every

log = logging.getLogger(__name__)

INSTALLED, UNCHANGED, REFUSED, FAILED = "installed", "unchanged", "refused", "failed"


@dataclass(frozen=True)
class Fetched:
    """What one fetch did: INSTALLED (``serial``), UNCHANGED, REFUSED or FAILED (``reason``)."""
    outcome: str
    reason: str = ""
    serial: int | None = None


class FetchFailed(Exception):
    """The URL did not give a manifest to judge; the message is safe to audit."""


class ManifestFetcher:
    """Fetches and installs the manifest; ``authority_key(fpr)`` is the key store's ``get``."""

    def __init__(self, settings: ManifestFetch, path: Path, authority: str | None,
                 authority_key: Callable[[str], Key], audit: AuditLog, *,
                 clock: Callable[[], float] = time.time, timeout: float = 30.0) -> None:
        self.settings, self.path, self.authority = settings, Path(path), authority
        self.authority_key, self.audit, self.clock, self.timeout = authority_key, audit, clock, timeout
        self._last: tuple[str, str] | None = None  # the last (outcome, reason) audited

    async def fetch_once(self) -> Fetched:
        """One fetch and install; the outcome is also logged and, when it is news, audited."""
        try:
            data = await self._get()
        except FetchFailed as e:
            return await asyncio.to_thread(self._record, Fetched(FAILED, str(e)))
        return await asyncio.to_thread(self._install, data)

    def _install(self, data: bytes) -> Fetched:
        """Verify and install ``data`` (a thread: signature checks, the file, the audit log)."""
        if not self.authority:
            return self._record(Fetched(FAILED, "no [federation] authority configured to verify it"))
        try:
            fpr = normalize_fpr(self.authority)
            result = install(data, self.path, fpr, self.authority_key(fpr), self.audit, now=self.clock(),
                             source=self.settings.url)
        except (ManifestRefused, ManifestInvalid) as e:
            return self._record(Fetched(REFUSED, e.message))
        except SecureMailError as e:  # the authority key missing, the installed file unreadable, the DB
            return self._record(Fetched(FAILED, e.message))
        if not result.changed:
            return self._record(Fetched(UNCHANGED, serial=result.manifest.serial))
        log.info("federation manifest serial %d installed from %s", result.manifest.serial, self.settings.url)
        return self._record(Fetched(INSTALLED, serial=result.manifest.serial))

    async def _get(self) -> bytes:
        """The body of a 200 answer, at most MAX_MANIFEST bytes, over TLS with the pinned key."""
        url, pin = self.settings.url, SpkiPin(self.settings.pin)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s:
                async with s.get(url, ssl=pin, allow_redirects=False) as r:
                    if r.status != 200:
                        raise FetchFailed(f"HTTP {r.status}")
                    data = bytearray()
                    async for chunk in r.content.iter_chunked(64 << 10):
                        data += chunk
                        if len(data) > MAX_MANIFEST:
                            raise FetchFailed(f"answer larger than {MAX_MANIFEST} bytes")
                    return bytes(data)
        except aiohttp.ServerFingerprintMismatch:
            raise FetchFailed("the server certificate does not match federation.url_pin") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise FetchFailed(f"unreachable: {type(e).__name__}") from None

    def _record(self, f: Fetched) -> Fetched:
        if f.outcome in (REFUSED, FAILED):
            log.warning("federation manifest from %s %s: %s", self.settings.url, f.outcome, f.reason)
            if self._last != (f.outcome, f.reason):
                try:
                    self.audit.append(f"manifest-fetch-{f.outcome}", url=self.settings.url, reason=f.reason)
                except SecureMailError as e:
                    log.warning("audit record manifest-fetch-%s not written: %s", f.outcome, e.message)
                    return f
        self._last = (f.outcome, f.reason)
        return f

    async def run(self, stop: asyncio.Event, lock: Path | None = None) -> None:
        """Fetch now and every ``fetch_interval`` until ``stop`` (one process of the home: ``lock``)."""
        await every(self.settings.interval, stop, self.fetch_once, what="federation manifest fetch",
                    lock=lock)
