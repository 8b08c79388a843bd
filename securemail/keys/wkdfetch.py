"""Fetching one WKD answer over HTTPS whose certificate key must match the member's TLS pin.

Key location's only network code, and the only importer of aiohttp on that path:
``keys/locate.py`` loads this module at its first fetch, so a process that builds a
``Locator`` but never fetches (a crypto worker answering from the key store) does not
load the HTTP client. The pin is compared before the request is sent; a mismatch is a
``LocateError``, never a fallback.
"""

from __future__ import annotations

import asyncio
import hmac

import aiohttp

from ..crypto.tlspin import der_pin
from ..errors import LocateError
from .wkd import MAX_KEY_BYTES


class SpkiPin(aiohttp.Fingerprint):
    """aiohttp's certificate check, comparing the SubjectPublicKeyInfo SHA-256 (the federation's pin;
    several, comma-separated, while the member rotates its certificate)."""

    def __init__(self, pin: str) -> None:
        self.pins = pin.split(",")
        super().__init__(bytes.fromhex(self.pins[0]))
        self.pin = pin

    def check(self, transport: asyncio.Transport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = der_pin(der) if der else None
        if got is None or not any([hmac.compare_digest(got, p) for p in self.pins]):
            host, port, *_ = transport.get_extra_info("peername") or ("?", 0)
            raise aiohttp.ServerFingerprintMismatch(bytes.fromhex(self.pins[0]),
                                                    bytes.fromhex(got or ""), host, port)


def fetch_wkd(url: str, pin: str, *, timeout: float = 10.0) -> bytes | None:
    """The body of a WKD answer (None for 404), over TLS whose key must match ``pin``."""
    return asyncio.run(_fetch(url, pin, timeout))


async def _fetch(url: str, pin: str, timeout: float) -> bytes | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url, ssl=SpkiPin(pin), allow_redirects=False) as r:
                if r.status == 404:
                    return None
                if r.status != 200:
                    raise LocateError(f"key directory answered HTTP {r.status}")
                data = await r.content.read(MAX_KEY_BYTES + 1)
                if len(data) > MAX_KEY_BYTES:
                    raise LocateError("key directory answer too large")
                return data
    except aiohttp.ServerFingerprintMismatch:
        raise LocateError("key directory certificate does not match the federation's TLS pin") from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise LocateError(f"key directory unreachable: {type(e).__name__}") from None
