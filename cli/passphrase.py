"""Passphrases for the person at the keyboard: from a file, or asked on the terminal without echo.

Every command that protects or unlocks a secret key gets its passphrase here, so that the rules are
written once: a ``--passphrase-file`` always wins; otherwise, on a terminal, the passphrase is asked
(twice for a new key, as GnuPG does; once to unlock, and only when the key is protected); without a
terminal nothing is asked and the command fails as it always did. A passphrase is never echoed,
logged, or put in an error message.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Callable

import click

from securemail.errors import UsageError

from .context import read_secret_file

TRIES = 3
NEED_CHOICE = "give --passphrase-file F, or --no-passphrase to store the key unprotected"
EMPTY_REFUSED = ("an empty passphrase is not accepted; to store the key unprotected, "
                 "use --no-passphrase")


def _stdin_is_tty() -> bool:
    return click.get_text_stream("stdin").isatty()


def _tell(text: str) -> None:
    click.echo(text, err=True)


@dataclass(frozen=True)
class Prompter:
    """Where passphrases come from; the terminal and the question are parameters (tests swap them)."""

    terminal: Callable[[], bool] = _stdin_is_tty
    ask: Callable[[str], str] = getpass.getpass  # reads /dev/tty with echo off
    tell: Callable[[str], None] = _tell

    def for_new_key(self, passphrase_file: str | None, no_passphrase: bool) -> str | None:
        """The passphrase that will protect a new key; None for --no-passphrase."""
        if passphrase_file and no_passphrase:
            raise UsageError("--passphrase-file and --no-passphrase exclude each other")
        if no_passphrase:
            return None
        if passphrase_file:
            passphrase = read_secret_file(passphrase_file)
            if not passphrase:
                raise UsageError("the passphrase file is empty")
            return passphrase
        if not self.terminal():
            raise UsageError(NEED_CHOICE)
        return self._ask_twice()

    def _ask_twice(self) -> str:
        for _ in range(TRIES):
            first = self.ask("Passphrase to protect the new key: ")
            if not first:
                raise UsageError(EMPTY_REFUSED)
            if self.ask("Repeat the passphrase: ") == first:
                return first
            self.tell("The passphrases do not match; try again.")
        raise UsageError(f"the passphrases did not match {TRIES} times; nothing was generated")

    def for_unlock(self, passphrase_file: str | None, protected: Callable[[], bool],
                   what: str) -> str | None:
        """The passphrase that unlocks ``what``; None when there is none to give.

        ``protected`` is asked only on a terminal without a file, so that an unprotected key (or a
        command with nothing to decrypt) never prompts. None lets the key layer give its usual
        'give the passphrase' error.
        """
        if passphrase_file:
            return read_secret_file(passphrase_file)
        if not self.terminal() or not protected():
            return None
        return self.ask(f"Passphrase for {what}: ") or None
