"""Settings of the tasks that keep a gateway current for years: manifest distribution and audit anchoring.

``[federation] url, url_pin, fetch_interval``: where the running gateway fetches the authority's
manifest, over HTTPS pinned by the SubjectPublicKeyInfo SHA-256 of the server's certificate
(manifestfetch.py). ``[audit] checkpoint_interval, checkpoint_dir, checkpoint_send,
checkpoint_to``: the periodic signed checkpoints of the audit chain's head (checkpoint.py).
``config.GatewayConfig`` reads them through ``manifest_fetch`` and ``anchoring``; durations are
read by ``parse_duration`` (also ``config.parse_duration``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PIN = re.compile(r"[0-9a-f]{64}")


def parse_duration(value, where: str) -> float:
    """Seconds from a number of seconds or a string like "30d", "12h", "15m", "45s" (or "0")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        number, unit = (text[:-1], _UNITS[text[-1]]) if text[-1] in _UNITS else (text, 1)
        try:
            seconds = float(number) * unit
        except ValueError:
            seconds = -1.0
    else:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f'{where} must be a duration: seconds, or a number with s, m, h or d ("30d")')
    return seconds


@dataclass(frozen=True)
class ManifestFetch:
    """``[federation] url``: the running gateway fetches the manifest there every ``interval``."""
    url: str                  # https://HOST[:PORT]/PATH
    pin: str                  # SHA-256 of the server certificate's SubjectPublicKeyInfo, hex
    interval: float = 3600.0


@dataclass(frozen=True)
class Anchoring:
    """``[audit]``: signed checkpoints of the chain's head, every ``interval`` (None: on demand only)."""
    directory: Path
    interval: float | None = None
    send: bool = False        # also queue each one to ``to``, or to the authority's address
    to: str | None = None


def _string(table: dict, key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value.strip() if value is not None else None


def manifest_fetch(fed: dict) -> ManifestFetch | None:
    """``[federation]`` url, url_pin and fetch_interval; None when no url is set."""
    url, pin = _string(fed, "url", "federation"), _string(fed, "url_pin", "federation")
    interval = parse_duration(fed.get("fetch_interval", 3600), "federation.fetch_interval")
    if url is None:
        if pin is not None:
            raise ConfigError("federation.url_pin is set without federation.url")
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"federation.url must be an https:// URL, not {url!r}")
    pin = (pin or "").lower().replace(":", "")
    if not _PIN.fullmatch(pin):
        raise ConfigError("federation.url_pin is needed with federation.url: the SHA-256 of the server "
                          "certificate's SubjectPublicKeyInfo, 64 hex digits")
    if interval <= 0:
        raise ConfigError("federation.fetch_interval must be above zero")
    return ManifestFetch(url, pin, interval)


def anchoring(table: dict, home: Path) -> Anchoring:
    """``[audit]`` checkpoint_interval (unset or 0: off), checkpoint_dir, checkpoint_send, checkpoint_to."""
    interval = parse_duration(table.get("checkpoint_interval", 0), "audit.checkpoint_interval")
    directory = Path(_string(table, "checkpoint_dir", "audit") or "checkpoints")
    send = table.get("checkpoint_send", False)
    if not isinstance(send, bool):
        raise ConfigError("audit.checkpoint_send must be true or false")
    to = _string(table, "checkpoint_to", "audit")
    if to is not None and to.count("@") != 1:
        raise ConfigError(f"audit.checkpoint_to must be an address, not {to!r}")
    return Anchoring(directory if directory.is_absolute() else home / directory, interval or None, send, to)
