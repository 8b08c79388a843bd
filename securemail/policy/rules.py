"""The policy chain: named rules in order, each returning a Verdict to refuse or None to pass.

The order is data (``CHAIN``); ``evaluate`` runs it and returns the first
refusal. Every rule is a pure function of ``Facts`` and has its own test.
"""

from __future__ import annotations

import re
from typing import Callable

from ..smtp import replies
from . import Verdict
from .address import domain_of
from .facts import MEMBER, OFFICE, OTHER, OWN, REMOTE, Facts

MAX_RECEIVED = 30
# An RFC 2047 encoded-word: never allowed inside an address (RFC 2047 §5), the Mailsploit trick.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")

Rule = Callable[[Facts], Verdict | None]


def one_from(f: Facts) -> Verdict | None:
    """Exactly one From header with one well-formed address (two Froms, Mailsploit, garbage)."""
    addrs = f.headers.from_addresses
    if (len(f.headers.from_values) != 1 or len(addrs) != 1 or domain_of(addrs[0]) is None
            or _ENCODED_WORD.search(addrs[0])):
        return Verdict("one_from", replies.ONE_FROM, "bad From header")
    return None


def mail_loop(f: Facts) -> Verdict | None:
    if f.headers.received > MAX_RECEIVED:
        return Verdict("mail_loop", replies.MAIL_LOOP, "mail loop")
    return None


def auth_identity(f: Facts) -> Verdict | None:
    """An authenticated user sends as itself only, in the envelope and in From."""
    if f.auth_user and (f.mail_from != f.auth_user or f.headers.from_addresses != (f.auth_user,)):
        return Verdict("auth_identity", replies.NOT_AUTH_IDENTITY, "sender differs from authenticated user")
    return None


def sender_alignment(f: Facts) -> Verdict | None:
    """The envelope sender's domain is the From domain (null sender: bounces, exempt)."""
    if f.mail_from and f.sender_domain != f.from_domain:
        return Verdict("sender_alignment", replies.SENDER_MISALIGNED, "envelope/From mismatch")
    return None


def office_sender(f: Facts) -> Verdict | None:
    """Mail from the office leaving the domain must come from a domain served here (we sign for it)."""
    leaving = any(c != OWN for c in f.recipients.values())
    if f.origin == OFFICE and leaving and f.from_class != OWN:
        return Verdict("office_sender", replies.SENDER_NOT_SERVED, "foreign sender from office")
    return None


def remote_sender(f: Facts) -> Verdict | None:
    """Mail from outside comes from a member gateway (or, if allowed, a non-member), never as us."""
    if f.origin != REMOTE:
        return None
    cls = f.sender_class if f.mail_from else f.from_class
    if cls == OWN or f.from_class == OWN:
        return Verdict("remote_sender", replies.OWN_DOMAIN_FROM_OUTSIDE, "own domain spoofed from outside")
    if cls != MEMBER and f.non_member_policy != "allow-plain":
        return Verdict("remote_sender", replies.SENDER_NOT_MEMBER, "non-member sender")
    return None


def _from_member(f: Facts) -> bool:
    return f.origin == REMOTE and (f.sender_class if f.mail_from else f.from_class) == MEMBER


def member_domain(f: Facts) -> str | None:
    """The member domain a message from outside comes from (envelope sender; From for a bounce),
    None when it is not from a member."""
    if not _from_member(f):
        return None
    return f.sender_domain if f.mail_from else f.from_domain


def manifest_current(f: Facts) -> Verdict | None:
    """Past the manifest's ``expires``, its members, keys and pins are no longer vouched for: mail to
    or from a member is deferred (451; the sender keeps it) until a fresh manifest is installed."""
    if f.manifest_expired and (f.recipients_of(MEMBER) or _from_member(f)):
        return Verdict("manifest_current", replies.MANIFEST_EXPIRED, "federation manifest expired")
    return None


def member_tls(f: Facts) -> Verdict | None:
    if _from_member(f) and not f.tls:
        return Verdict("member_tls", replies.MEMBER_TLS_REQUIRED, "no TLS")
    return None


def member_cert(f: Facts) -> Verdict | None:
    """Mail from a member domain comes from that member's gateway: a session whose TLS client
    certificate has the domain's manifest ``tls_pin``. DKIM alone can be replayed by anyone."""
    if not _from_member(f):
        return None
    claimed = {d for d, c in ((f.sender_domain, f.sender_class), (f.from_domain, f.from_class))
               if d and c == MEMBER}
    if f.cert_domains is None:
        return Verdict("member_cert", replies.MEMBER_CERT_REQUIRED, "no client certificate")
    if not claimed <= f.cert_domains:
        shown = ", ".join(sorted(f.cert_domains)) or "no member"
        return Verdict("member_cert", replies.MEMBER_CERT_MISMATCH,
                       f"client certificate of {shown}, not {', '.join(sorted(claimed - f.cert_domains))}")
    return None


def member_dkim(f: Facts) -> Verdict | None:
    if _from_member(f) and not f.dkim_aligned:
        reply = replies.DKIM_TEMPERROR if f.dkim_status == "temperror" else replies.DKIM_NOT_ALIGNED
        return Verdict("member_dkim", reply, f"dkim {f.dkim_status}")
    return None


def member_encrypted(f: Facts) -> Verdict | None:
    """Between member domains, only integrity-protected OpenPGP: never plaintext."""
    if _from_member(f) and not f.encryption.encrypted:
        return Verdict("member_encrypted", replies.MEMBER_PLAINTEXT, f"not encrypted: {f.encryption.reason}")
    return None


def mime_structure(f: Facts) -> Verdict | None:
    """A MIME structure the gateway cannot take apart is refused for good (a 4xx would be retried forever)."""
    if f.encryption.malformed:
        return Verdict("mime_structure", replies.MALFORMED_MIME, f"malformed: {f.encryption.reason}")
    return None


def non_member_recipient(f: Facts) -> Verdict | None:
    if f.recipients_of(OTHER) and f.non_member_policy != "allow-plain":
        return Verdict("non_member_recipient", replies.NON_MEMBER_RECIPIENT, "non-member recipient")
    return None


CHAIN: list[tuple[str, Rule]] = [
    ("one_from", one_from),
    ("mail_loop", mail_loop),
    ("auth_identity", auth_identity),
    ("sender_alignment", sender_alignment),
    ("office_sender", office_sender),
    ("remote_sender", remote_sender),
    ("manifest_current", manifest_current),
    ("member_tls", member_tls),
    ("member_cert", member_cert),
    ("member_dkim", member_dkim),
    ("member_encrypted", member_encrypted),
    ("mime_structure", mime_structure),
    ("non_member_recipient", non_member_recipient),
]


def evaluate(f: Facts, chain: list[tuple[str, Rule]] = CHAIN) -> Verdict | None:
    for _, rule in chain:
        verdict = rule(f)
        if verdict is not None:
            return verdict
    return None
