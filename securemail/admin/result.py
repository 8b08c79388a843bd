"""One result of ``securemail gateway check``: what was checked, whether it is right, and the fix.

The checks of ``admin/check.py`` and its helpers are functions returning these values; the CLI
only prints them. ``detail`` and ``fix`` are for the admin's terminal and scripts: they name
files, settings and addresses, never a secret (a key, a password, a database password).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str                # "tls certificate", "listener relay", "federation entry interieur.gouv.fr"
    ok: bool
    detail: str              # what was found (days left, the address that answered, why it is wrong)
    fix: str = ""            # for a problem: what the admin does about it
    word: str = "PROBLEM"    # the human output's word for a problem (listeners keep "COLLISION"),
    #                          or for a warning: an ok check that still has a fix ("WARNING")

    @property
    def label(self) -> str:
        """The human output's first word: "ok", or the word of a problem or a warning."""
        return self.word if not self.ok or self.fix else "ok"

    def to_dict(self) -> dict:
        """The JSON object of ``gateway check --json``: name, ok, detail, fix."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def problem(name: str, detail: str, fix: str, word: str = "PROBLEM") -> Check:
    return Check(name, False, detail, fix, word)


def warning(name: str, detail: str, fix: str) -> Check:
    """Fine for now, but soon a problem (a manifest near its expiry): ok, with a fix to apply."""
    return Check(name, True, detail, fix, "WARNING")


def command(home, args: str) -> str:
    """A securemail command on ``home``, as a fix tells the admin to run it."""
    return f"securemail --home {home} {args}"


def shown(path, home) -> str:
    """``path`` as the admin reads it: relative to the home when it is inside."""
    try:
        return str(path.relative_to(home))
    except ValueError:
        return str(path)
