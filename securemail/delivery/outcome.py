"""The result of one delivery attempt: delivered, temporary or permanent, with the remote reply.

``code`` is the remote SMTP reply code when a server answered, else None (the
failure was ours or the network's). ``message`` is short and safe to store, to
audit and to put in a DSN: the remote's own text (one line, printable ASCII,
bounded) or a fixed phrase of ours, never an exception text or a path.

For one SMTP transaction to several recipients, the recipients the server
refused at RCPT time are in ``refused``; ``for_recipient(rcpt)`` gives the
outcome for one of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["delivered", "temporary", "permanent"]

DELIVERED: Kind = "delivered"
TEMPORARY: Kind = "temporary"
PERMANENT: Kind = "permanent"

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_UNSAFE = re.compile(r"[^\x20-\x7e]+")
MAX_MESSAGE = 200


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    code: int | None
    message: str
    refused: Mapping[str, "Outcome"] = field(default_factory=dict)

    def for_recipient(self, rcpt: str) -> "Outcome":
        """This recipient's outcome: its RCPT refusal if it had one, else the transaction's."""
        return self.refused.get(rcpt, self)

    @property
    def status(self) -> str | None:
        """The enhanced status code (``5.1.1``) the remote gave, if it gave one."""
        m = _ENHANCED.match(self.message)
        return ".".join(m.groups()) if m else None

    def describe(self) -> str:
        """One line for last_error, the audit and the log: ``550 5.1.1 no such user``."""
        return f"{self.code} {self.message}" if self.code is not None else self.message


def from_reply(code: int, text: str) -> Outcome:
    """Classify a remote reply: 2xx delivered, 5xx permanent, anything else temporary."""
    kind: Kind = DELIVERED if 200 <= code < 300 else PERMANENT if 500 <= code < 600 else TEMPORARY
    return Outcome(kind, code, clean(text))


def temporary(message: str) -> Outcome:
    """A temporary failure that no server answered (network, TLS, pin, local disk)."""
    return Outcome(TEMPORARY, None, message)


def permanent(message: str) -> Outcome:
    """A permanent failure decided here (bad address, key no longer valid)."""
    return Outcome(PERMANENT, None, message)


def clean(text: str) -> str:
    """Remote text made safe to store and repeat: one line, printable ASCII, bounded."""
    one = " ".join(_UNSAFE.sub(" ", str(text)).split())
    return one if len(one) <= MAX_MESSAGE else one[:MAX_MESSAGE - 3] + "..."
