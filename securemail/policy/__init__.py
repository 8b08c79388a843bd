"""Policy: one decision per module, each a pure function of facts returning a Verdict."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Reply


@dataclass(frozen=True)
class Verdict:
    """A refusal: the SMTP reply to give (a named one, smtp/replies.py) and a reason for the audit
    log (no content)."""
    rule: str
    reply: Reply
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reply, Reply):
            raise TypeError(f"a Verdict carries a Reply, not {type(self.reply).__name__}")

    @property
    def temporary(self) -> bool:
        return self.reply.temporary
