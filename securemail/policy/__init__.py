"""Policy: one decision per module, each a pure function of facts returning a Verdict."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """A refusal: the SMTP reply to give and a reason for the audit log (no content)."""
    rule: str
    reply: str
    reason: str

    @property
    def temporary(self) -> bool:
        return self.reply.startswith("4")
