"""What every command shares: the home and the objects the composition root builds from it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from securemail.app import Core, open_home
from securemail.errors import UsageError


class Context:
    def __init__(self, home: str | None) -> None:
        self._home = home
        self._core: Core | None = None

    @property
    def core(self) -> Core:
        if self._core is None:
            self._core = open_home(self._home)
        return self._core

    def close(self) -> None:
        if self._core is not None:
            self._core.close()


def read_secret_file(path: str | None) -> str | None:
    """A passphrase or password from a file (first line, without its newline)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    return text.splitlines()[0] if text else ""


def read_input(path: str) -> bytes:
    if path == "-":
        return click.get_binary_stream("stdin").read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def iso_or_dash(ts: float | None) -> str:
    """A timestamp as UTC ISO 8601 to the second, or "-" when there is none."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else "-"
