"""Leak checks: plaintext of member-bound mail, secrets, and internals where they must not be.

Every test message bound for a member domain carries ``MARKER`` in its
Subject and its body. The marker must never appear in what the receiving side
got, in an SMTP reply, in a DSN or in a log line; a private key never appears
in a log line; replies and DSNs carry no internals (paths, SQL, stack traces,
versions, exception names).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

MARKER = "PROOF-PLAINTEXT-5e1b"
MARKER_B = MARKER.encode()

_INTERNALS = [
    ("path", re.compile(r"(?<![\w.])/(?:tmp|home|root|usr|var|work|etc|opt|proc)/")),
    ("source file", re.compile(r"\.py\b")),
    ("stack trace", re.compile(r"Traceback|File \"|line \d+, in ")),
    ("SQL", re.compile(r"\b(?:SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.I)),
    ("database", re.compile(r"sqlite|psycopg|sqlalchemy|postgres|OperationalError|IntegrityError", re.I)),
    ("version", re.compile(r"Python/?\s?3\.|aiosmtpd|aiosmtplib|securemail[ /]\d|PGPy|OpenSSL", re.I)),
    ("exception", re.compile(r"\b\w+(?:Error|Exception)\b|Errno")),
]
_SECRETS = [re.compile(rb"PRIVATE KEY"), re.compile(rb"BEGIN PGP PRIVATE")]


@dataclass
class Leak:
    where: str      # "reply", "dsn", "wire", "log"
    what: str       # "plaintext", "secret", or the internal kind
    sample: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.sample[:160]!r}"


def internals(text: str) -> list[str]:
    """The kinds of internal detail in ``text`` (a reply line or a DSN's text)."""
    return [kind for kind, rx in _INTERNALS if rx.search(text)]


@dataclass
class Scan:
    """Accumulates leaks over one scenario; ``counts`` are the figures."""

    leaks: list[Leak] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def _count(self, where: str, n: int = 1) -> None:
        self.checked[where] = self.checked.get(where, 0) + n

    def replies(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._count("replies")
            if MARKER in line:
                self.leaks.append(Leak("reply", "plaintext", line))
            for kind in internals(line):
                self.leaks.append(Leak("reply", kind, line))

    def dsn(self, raw: bytes) -> None:
        """A DSN: never the marker; its report parts carry no internals (the headers part may be anything)."""
        self._count("dsns")
        if MARKER_B in raw:
            self.leaks.append(Leak("dsn", "plaintext", _around(raw, MARKER_B)))
        report = raw.split(b"text/rfc822-headers", 1)[0].decode("utf-8", "replace")
        for kind in internals(report):
            self.leaks.append(Leak("dsn", kind, report))

    def wire(self, messages: Iterable[bytes], where: str = "wire") -> None:
        """What the receiving side got from the gateway: never the marker."""
        for raw in messages:
            self._count(where)
            if MARKER_B in raw:
                self.leaks.append(Leak(where, "plaintext", _around(raw, MARKER_B)))

    def log(self, text: bytes | str, where: str = "log") -> None:
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        self._count(f"{where} lines", data.count(b"\n"))
        if MARKER_B in data:
            self.leaks.append(Leak(where, "plaintext", _around(data, MARKER_B)))
        for rx in _SECRETS:
            m = rx.search(data)
            if m:
                self.leaks.append(Leak(where, "secret", _around(data, m.group(0))))

    @property
    def count(self) -> int:
        return len(self.leaks)

    def figures(self) -> dict:
        return {"leaks": self.count, "leak_samples": [str(x) for x in self.leaks[:5]],
                "leak_checked": dict(self.checked)}


def _around(data: bytes, needle: bytes, width: int = 80) -> str:
    i = data.find(needle)
    return data[max(0, i - width):i + len(needle) + width].decode("utf-8", "replace")


class LogCapture(logging.Handler):
    """Every log record of this process (gateways built in-process), formatted with tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record must not break the test
            text = repr(record.msg)
        with self._lock2:
            self.lines.append(text)

    def text(self) -> str:
        with self._lock2:
            return "\n".join(self.lines) + "\n"

    def __enter__(self) -> "LogCapture":
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
