"""Where a DSN goes: queued with the null sender, locally (as delivery.local says), or encrypted
and signed to a member domain, or to the office MTA for a non-member when the policy allows plain
mail (``DeliveryWorker(bounce_sender=...)``). Other mail the gateway writes itself (an audit
checkpoint for the authority, checkpoint.py) takes the same way, under its own ``route`` name."""

from __future__ import annotations

import logging
from typing import Protocol

from ..config import GatewayConfig
from ..manifest_source import ManifestSource
from ..policy.address import domain_of
from ..queue import Queue
from ..transform.hops import local_hop, relay_hop, smtp_hop

log = logging.getLogger(__name__)


class Outbound(Protocol):
    """What a DSN to a member needs of the crypto stage (transform/routes.py ``Transformer``)."""

    def outbound(self, raw: bytes, domain: str, rcpts: list[str], *,
                 sender_domain: str | None) -> tuple[bytes, dict]: ...


class Bounces:
    """Queues DSNs with the null sender: locally, or encrypted and signed to a member domain."""

    def __init__(self, config: GatewayConfig, queue: Queue, transformer: Outbound | None,
                 manifest: ManifestSource) -> None:
        self.config, self.queue, self.transformer, self.manifest = config, queue, transformer, manifest

    def send(self, dsn: bytes, rcpt: str, *, route: str = "dsn", from_domain: str | None = None) -> bool:
        """Queue ``dsn`` for ``rcpt``; False when it has no route. ``route`` names it in the queue and
        the audit log; ``from_domain``: its From domain, whose key signs it (default: the first)."""
        domain = domain_of(rcpt) or ""
        body = dsn
        if self.config.serves(domain):
            hop = local_hop(self.config, rcpt)  # delivery.local: relay, lmtp or maildir
        elif self.manifest() is not None and self.manifest().is_member(domain):
            member = self.manifest().member(domain)
            # written here, from MAILER-DAEMON@ our first domain: encrypted and signed by us
            body, _ = self.transformer.outbound(dsn, domain, [rcpt],
                                                sender_domain=from_domain or self.config.domains[0])
            hop = smtp_hop(member.gateway[0], member.gateway[1], member.tls_pins)
        elif self.config.relay_to is not None and self.config.non_member_policy == "allow-plain":
            hop = relay_hop(*self.config.relay_to)
        else:
            log.warning("%s for a non-member address has no route; not queued", route)
            self.queue.audit_log and self.queue.audit_log.append(f"{route}_unroutable", rcpt_domain=domain)
            return False
        self.queue.enqueue("", [(rcpt, hop)], body, meta={"route": route},
                           audit=(f"{route}_queued", {"rcpt_domain": domain}))
        return True
