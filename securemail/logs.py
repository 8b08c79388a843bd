"""Log lines for journald and a SIEM: text or JSON lines with one schema, addresses as the operator chose.

``[log] format`` is ``text`` (a level name, the process role and pid, the logger, the message, then
``key=value`` fields) or ``json`` (one object per line with the keys of ``SCHEMA``, always all of
them, ``null`` when they do not apply). Either way a record is one line: newlines, carriage returns
and other control characters (ANSI escapes included) are escaped, so a traceback or a client's
crafted HELO cannot forge a second line, and journald keeps one entry per record. Under systemd
(stderr is the journal's stream, ``JOURNAL_STREAM``) each line starts with its syslog priority
(``<6>``), which journald turns into the entry's priority and removes.

``[log] addresses`` decides what is written of an address's local part, a person's name in most
ministries' conventions and so personal data (GDPR art. 4(1)): ``full``; ``hashed`` (the default):
``hmac-`` and 16 hex digits of HMAC-SHA256 under ``log.key``, a random key kept in the home (0600),
so that one person's records can be told apart and followed without being named, and no dictionary
of names reverses it without that key (pseudonymisation, art. 4(5)); ``none``: the domain only. It
applies to the event fields (``from``, ``to``) and to every message text, by pattern (addresses, a
key directory request's ``l=`` local part and its ``/hu/`` hash, an unkeyed hash of the local part).

What a record never holds is decided where it is made: events carry envelope metadata, never a
subject, a header, a body or a secret (pipeline.py, delivery/report.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

FORMATS = ("text", "json")
ADDRESSES = ("full", "hashed", "none")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# the keys of every JSON line, in this order (README "Logs")
SCHEMA = ("time", "level", "role", "pid", "logger", "event", "message", "queue_id", "listener", "peer",
          "from", "to", "from_domain", "to_domains", "verdict", "reason", "reply_code", "duration")
EVENT_FIELDS = ("queue_id", "listener", "peer", "verdict", "reason", "reply_code", "duration")
EXTRA = "securemail_event"      # the LogRecord attribute that carries an event's fields
KEY_FILE = "log.key"            # the HMAC key of hashed addresses, in the home
QUIET = ("mail.log",)           # aiosmtpd: three INFO lines per connection; shown at debug only
SYSLOG = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

_ADDRESS = re.compile(r"(?<![\w.+!#$%&'*/=?^`{|}~-])([\w.+!#$%&'*/=?^`{|}~-]+)@((?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+)")
_WKD_LOCAL = re.compile(r"([?&]l=)([^&\s\"']+)")
_WKD_HASH = re.compile(r"(/hu/)[a-z0-9]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"
    addresses: str = "hashed"
    level: str = "info"

    @classmethod
    def from_table(cls, table: dict) -> "LogSettings":
        """``[log]`` of securemail.toml; ConfigError naming the key and its choices."""
        out = {}
        for key, choices in (("format", FORMATS), ("addresses", ADDRESSES), ("level", tuple(LEVELS))):
            value = table.get(key, getattr(cls, key))
            if value not in choices:
                raise ConfigError(f"log.{key} must be {', '.join(repr(c) for c in choices)}, not {value!r}")
            out[key] = value
        unknown = set(table) - set(out)
        if unknown:
            raise ConfigError(f"unknown setting log.{sorted(unknown)[0]} (format, addresses, level)")
        return cls(**out)


def log_key(home: Path) -> bytes:
    """The home's HMAC key for hashed addresses, made (0600) on first use; several processes starting
    at once agree on the first one written."""
    path = Path(home) / KEY_FILE
    if not path.exists():
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)   # never replaces a key another process wrote first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_bytes()


class Addresses:
    """What is shown of addresses: ``full``, ``hashed`` (keyed) or ``none`` (the domain only)."""

    def __init__(self, mode: str = "hashed", key: bytes = b"") -> None:
        if mode not in ADDRESSES or (mode == "hashed" and not key):
            raise ConfigError(f"log.addresses {mode!r} needs a key" if mode == "hashed" else f"log.addresses {mode!r}")
        self.mode, self._key = mode, key
        self.local = functools.lru_cache(maxsize=4096)(self._local)  # the same people write all day

    def _local(self, local: str) -> str:
        if self.mode == "full":
            return local
        if self.mode == "none":
            return "*"
        return "hmac-" + hmac.new(self._key, local.lower().encode(), hashlib.sha256).hexdigest()[:16]

    def address(self, address: str | None) -> str | None:
        """An address as the mode shows it; None in ``none`` mode (the domain fields say the rest)."""
        if address is None or self.mode == "none":
            return None
        local, at, domain = address.rpartition("@")
        return f"{self.local(local)}@{domain.lower()}" if at and local else address

    def text(self, text: str) -> str:
        """``text`` with every local part it shows replaced (no-op in ``full`` mode)."""
        if self.mode == "full":
            return text
        text = _ADDRESS.sub(lambda m: f"{self._shown(m.group(1))}@{m.group(2)}", text)
        text = _WKD_LOCAL.sub(lambda m: m.group(1) + self._shown(m.group(2)), text)
        return _WKD_HASH.sub(r"\1*", text)

    def _shown(self, local: str) -> str:
        """``local`` as shown, once: a text already shown is not hashed again."""
        return local if local == "*" or local.startswith("hmac-") else self.local(local)


def domain(address: str | None) -> str | None:
    if address is None:
        return None
    return address.rpartition("@")[2].lower() if "@" in address else ""


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, sender: str | None = None,
          recipients=(), **fields) -> None:
    """Log the event ``name`` with its fields (``EVENT_FIELDS``); ``sender`` and ``recipients`` are
    full addresses, shown as ``[log] addresses`` says by the formatter."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={EXTRA: {"event": name, "from": sender, "to": list(recipients), **fields}})


class JsonFormatter(logging.Formatter):
    """One JSON object per record with every key of ``SCHEMA``."""

    def __init__(self, role: str, addresses: Addresses, *, priority: bool = False) -> None:
        super().__init__()
        self.role, self.addresses, self.priority = role, addresses, priority

    def fields(self, record: logging.LogRecord) -> dict:
        ev = getattr(record, EXTRA, None) or {}
        sender, rcpts = ev.get("from"), ev.get("to") or []
        out = dict.fromkeys(SCHEMA)
        out.update(time=_iso(record.created), level=record.levelname, role=self.role, pid=record.process,
                   logger=record.name, event=ev.get("event", "log"),
                   message=self.addresses.text(record.getMessage()))
        out.update({k: ev.get(k) for k in EVENT_FIELDS})
        if ev:
            shown = [self.addresses.address(r) for r in rcpts]
            out.update({"from": self.addresses.address(sender), "to": None if self.addresses.mode == "none" else shown,
                        "from_domain": domain(sender), "to_domains": sorted({domain(r) for r in rcpts})})
        if record.exc_info:
            out["exception"] = self.addresses.text(self.formatException(record.exc_info))
        return out

    def format(self, record: logging.LogRecord) -> str:
        line = json.dumps(self.fields(record), ensure_ascii=False, separators=(",", ":"), default=str)
        return _prefixed(line, record, self.priority)


class TextFormatter(JsonFormatter):
    """``LEVEL role[pid] logger: message key=value...``: the fields that apply, escaped to one line."""

    def format(self, record: logging.LogRecord) -> str:
        f = self.fields(record)
        head = f"{f['level']} {f['role']}[{f['pid']}] {f['logger']}: {f['message']}"
        pairs = [f"{k}={_value(f[k])}" for k in SCHEMA[7:] if f[k] not in (None, [])]
        line = " ".join([head, *pairs]) + (f" exception={f['exception']}" if "exception" in f else "")
        return _prefixed(_escape(line), record, self.priority)


def _value(v) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6f}".rstrip("0").rstrip(".")
    text = str(v)
    return json.dumps(text) if (not text or " " in text or '"' in text) else text


def _escape(line: str) -> str:
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": " "}.get(m.group(0), f"\\x{ord(m.group(0)):02x}"),
                        line)


def _prefixed(line: str, record: logging.LogRecord, priority: bool) -> str:
    return f"<{SYSLOG.get(record.levelno, 6)}>{line}" if priority else line


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def under_journald(stream) -> bool:
    """Whether ``stream`` is systemd's journal stream (``JOURNAL_STREAM`` names its device and inode)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def configure(settings: LogSettings, role: str, *, home: Path | None = None, level: int | None = None,
              stream=None) -> logging.Handler:
    """This process's logging, as ``[log]`` says: one handler on the root logger (the others removed)
    writing to ``stream`` (stderr); ``level`` overrides ``log.level`` (``-v``: debug)."""
    stream = stream if stream is not None else sys.stderr
    key = log_key(home) if settings.addresses == "hashed" and home is not None else b""
    addresses = Addresses(settings.addresses if key or settings.addresses != "hashed" else "none", key)
    kind = JsonFormatter if settings.format == "json" else TextFormatter
    handler = logging.StreamHandler(stream)
    handler.setFormatter(kind(role, addresses, priority=under_journald(stream)))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[settings.level] if level is None else level)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)
    return handler
