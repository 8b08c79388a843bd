"""Facts about one received message, gathered once so that every rule is a pure function of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import getaddresses

from ..envelope import Envelope
from ..mail.headers import HeaderBlock, parse_header_block
from .address import MEMBER, OTHER, OWN, classify, domain_of, split
from .encryption import EncryptionCheck

OFFICE, REMOTE = "office", "remote"


@dataclass(frozen=True)
class Headers:
    """The few top-level headers policy reads, taken from the one parse of the header block."""
    from_values: tuple[str, ...]
    received: int

    @property
    def from_addresses(self) -> tuple[str, ...]:
        pairs = getaddresses(list(self.from_values))
        return tuple(a.strip().lower() for _, a in pairs if a.strip())

    @classmethod
    def of(cls, block: HeaderBlock) -> "Headers":
        return cls(block.texts("from"), block.count("received"))

    @classmethod
    def parse(cls, raw: bytes) -> "Headers":
        """The headers of ``raw`` by the one parse with its default limits (HeaderBlockError if refused)."""
        return cls.of(parse_header_block(raw))


@dataclass(frozen=True)
class Facts:
    origin: str                       # OFFICE (trusted network or authenticated) or REMOTE
    listener: str
    tls: bool
    auth_user: str | None
    mail_from: str
    sender_domain: str | None
    sender_class: str | None          # OWN, MEMBER, OTHER for the envelope sender's domain
    headers: Headers
    recipients: dict[str, str]        # address -> OWN | MEMBER | OTHER
    encryption: EncryptionCheck
    dkim_status: str = "none"         # pass | fail | none | temperror | permerror
    dkim_domains: frozenset[str] = field(default_factory=frozenset)
    non_member_policy: str = "refuse"
    from_class: str | None = None     # OWN, MEMBER, OTHER for the From header's domain
    block: HeaderBlock | None = field(default=None, repr=False)  # the one parse: what the transform reads
    # the member domains whose manifest tls_pin is the session's TLS client certificate's
    # (empty: a certificate of no member); None: the session showed no client certificate
    cert_domains: frozenset[str] | None = None
    manifest_expired: bool = False    # the installed federation manifest is past its ``expires``

    @property
    def from_domain(self) -> str | None:
        addrs = self.headers.from_addresses
        return domain_of(addrs[0]) if len(addrs) == 1 else None

    @property
    def dkim_aligned(self) -> bool:
        return self.dkim_status == "pass" and self.from_domain in self.dkim_domains

    def recipients_of(self, cls: str) -> list[str]:
        return [r for r, c in self.recipients.items() if c == cls]


def gather(env: Envelope, *, listener: str, trusted: bool, own_domains, members,
           encryption: EncryptionCheck, dkim_status: str = "none",
           dkim_domains: frozenset[str] = frozenset(), non_member_policy: str = "refuse",
           block: HeaderBlock | None = None, cert_domains: frozenset[str] | None = None,
           manifest_expired: bool = False) -> Facts:
    """The facts of ``env``; ``block`` is its header block, parsed here with the default limits if not
    given (HeaderBlockError when refused)."""
    sender_domain = domain_of(env.mail_from) if env.mail_from else None
    rcpts = {}
    for r in env.rcpt_tos:
        parts = split(r)
        rcpts[r.lower()] = classify(parts[1], own_domains, members) if parts else OTHER
    block = parse_header_block(env.data) if block is None else block
    headers = Headers.of(block)
    addrs = headers.from_addresses
    from_domain = domain_of(addrs[0]) if len(addrs) == 1 else None
    return Facts(
        origin=OFFICE if (trusted or env.auth_user) else REMOTE, listener=listener, tls=env.tls,
        auth_user=env.auth_user.lower() if env.auth_user else None, mail_from=env.mail_from.lower(),
        sender_domain=sender_domain,
        sender_class=classify(sender_domain, own_domains, members) if sender_domain else None,
        headers=headers, recipients=rcpts, encryption=encryption,
        dkim_status=dkim_status, dkim_domains=frozenset(d.lower() for d in dkim_domains),
        non_member_policy=non_member_policy,
        from_class=classify(from_domain, own_domains, members) if from_domain else None, block=block,
        cert_domains=cert_domains, manifest_expired=manifest_expired)


__all__ = ["Facts", "Headers", "gather", "OFFICE", "REMOTE", "OWN", "MEMBER", "OTHER"]
