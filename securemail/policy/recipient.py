"""RCPT TO: may this session hand us mail for this address? Relay control, decided per recipient."""

from __future__ import annotations

from ..smtp import replies
from . import Verdict
from .address import MEMBER, OTHER, OWN, classify, split

BAD_ADDRESS = Verdict("rcpt_syntax", replies.BAD_RCPT_SYNTAX, "bad address")
RELAY_DENIED = Verdict("relay", replies.RELAY_DENIED, "relay attempt")
NON_MEMBER = Verdict("non_member_recipient", replies.NON_MEMBER_RECIPIENT, "non-member recipient")


def decide_rcpt(address: str, *, office: bool, own_domains, members,
                non_member_policy: str = "refuse") -> Verdict | None:
    """None to accept. ``office``: the peer is a trusted network or an authenticated user.

    Anyone may send to our own domains (inbound checks run at DATA); only the
    office may send anywhere else; non-member domains only when policy allows.
    """
    parts = split(address)
    if parts is None:
        return BAD_ADDRESS
    cls = classify(parts[1], own_domains, members)
    if cls == OWN:
        return None
    if not office:
        return RELAY_DENIED
    if cls == OTHER and non_member_policy != "allow-plain":
        return NON_MEMBER
    return None


__all__ = ["decide_rcpt", "MEMBER", "OTHER", "OWN"]
