"""Where a DSN goes: queued with the null sender, locally (as delivery.local says), or encrypted
and signed to a member domain, or to the office MTA for a non-member when the policy allows plain
mail (``DeliveryWorker(bounce_sender=...)``)."""

from __future__ import annotations

import logging
from typing import Protocol

from ..config import GatewayConfig
from ..federation import ManifestSource
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

    def send(self, dsn: bytes, rcpt: str) -> None:
        domain = domain_of(rcpt) or ""
        body = dsn
        if self.config.serves(domain):
            hop = local_hop(self.config, rcpt)  # delivery.local: relay, lmtp or maildir
        elif self.manifest() is not None and self.manifest().is_member(domain):
            member = self.manifest().member(domain)
            # written here, from MAILER-DAEMON@ our first domain: encrypted and signed by us
            body, _ = self.transformer.outbound(dsn, domain, [rcpt], sender_domain=self.config.domains[0])
            hop = smtp_hop(member.gateway[0], member.gateway[1], member.tls_pins)
        elif self.config.relay_to is not None and self.config.non_member_policy == "allow-plain":
            hop = relay_hop(*self.config.relay_to)
        else:
            log.warning("DSN for a non-member address has no route; kept as bounced only")
            self.queue.audit_log and self.queue.audit_log.append("dsn_unroutable", rcpt_domain=domain)
            return
        self.queue.enqueue("", [(rcpt, hop)], body, meta={"route": "dsn"},
                           audit=("dsn_queued", {"rcpt_domain": domain}))
