"""The DATA path: facts → policy chain → crypto stage → durable queue → 250.

``Pipeline.decide_rcpt`` and ``Pipeline.accept`` are what the SMTP adapter
calls. The reply 250 is given only after every queue item of the message is
committed (one transaction); any refusal is audited with its rule and reason,
never with content. CPU work (MIME parsing, DKIM, OpenPGP) runs off the event
loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

from ..audit import AuditLog
from ..crypto import dkim as D
from ..delivery.hops import maildir_hop, relay_hop, smtp_hop
from ..envelope import Envelope
from ..errors import KeyChanged, PolicyRefusal, SecureMailError
from ..policy import Verdict, encryption, rules
from ..policy.address import MEMBER, OTHER, OWN, domain_of
from ..policy.facts import OFFICE, Facts, gather
from ..policy.recipient import decide_rcpt
from ..queue import NewMessage, Queue
from ..queue.batch import GroupCommit
from ..smtp.replies import KEY_CHANGED_HELD
from .transform import Item, Transformer

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, *, config, manifest: Callable[[], object], queue: Queue,
                 audit: AuditLog, transformer: Transformer,
                 dnsfunc_fallback=None, run_cpu=None) -> None:
        self.config = config
        self.manifest = manifest            # () -> Manifest | None, the installed one
        self.queue = queue
        self.audit = audit
        self.transformer = transformer
        self.dnsfunc_fallback = dnsfunc_fallback
        self.run_cpu = run_cpu or (lambda fn, *a: asyncio.to_thread(fn, *a))
        self.commit = GroupCommit(queue.enqueue_many)

    def members(self) -> frozenset[str]:
        m = self.manifest()
        return frozenset(d for d in (m.members if m else {}) if d not in self.config.domains)

    # --- RCPT ----------------------------------------------------------------------
    def rcpt_decider(self, listener):
        def decide(session, address: str):
            office = listener.trusts(session.peer_ip) or bool(session.auth_user)
            v = decide_rcpt(address, office=office, own_domains=self.config.domains,
                            members=self.members(), non_member_policy=self.config.non_member_policy)
            if v is None:
                return None
            self._audit("refused", rule=v.rule, reason=v.reason, peer=session.peer_ip,
                        rcpt_domain=domain_of(address) or "")
            return v.reply
        return decide

    # --- DATA -----------------------------------------------------------------------
    def data_acceptor(self, listener):
        async def accept(env: Envelope) -> str:
            return await self.accept(env, listener)
        return accept

    async def accept(self, env: Envelope, listener) -> str:
        try:  # one trip off the event loop for facts, policy and the crypto stage
            facts, verdict, items = await self.run_cpu(self._decide, env, listener)
        except KeyChanged as e:  # never sent to the new key silently: the office MTA keeps it and retries
            log.warning("holding mail for %s: key changed from %s to %s; accept with "
                        "'securemail keys accept %s %s'", e.address, e.pinned, e.offered, e.address, e.offered)
            self._audit("key-change-held", address=e.address, pinned=e.pinned, offered=e.offered,
                        peer=env.peer_ip)
            return KEY_CHANGED_HELD
        except SecureMailError as e:
            if not e.temporary:
                return self._refuse(Verdict("crypto", e.smtp_reply(), e.message), env)
            raise
        if verdict is not None:
            return self._refuse(verdict, env)
        news = [NewMessage(it.sender, it.recipients, it.body, peer=env.peer_ip, meta=it.meta,
                           audit=("accepted", {"route": it.meta.get("route"),
                                               "sender_domain": facts.sender_domain or "",
                                               "recipient_domains": sorted({domain_of(r) or "" for r, _ in it.recipients}),
                                               "encrypted_to": it.meta.get("encrypted_to", []),
                                               "origin": facts.origin, "peer": env.peer_ip}))
                for it in items]
        ids = await self.commit.submit(news)
        return f"250 2.0.0 OK: queued as {ids[0] if len(ids) == 1 else ids[0] + '+' + str(len(ids) - 1)}"

    def _refuse(self, v: Verdict, env: Envelope) -> str:
        self._audit("refused", rule=v.rule, reason=v.reason, peer=env.peer_ip,
                    sender_domain=domain_of(env.mail_from) or "",
                    recipient_domains=sorted({domain_of(r) or "" for r in env.rcpt_tos}))
        return v.reply

    def _audit(self, kind: str, **fields) -> None:
        try:
            self.audit.append(kind, **fields)
        except SecureMailError:
            log.warning("audit record %s could not be written", kind)

    def _decide(self, env: Envelope, listener) -> tuple[Facts, Verdict | None, list[Item]]:
        facts = self._facts(env, listener)
        verdict = rules.evaluate(facts)
        if verdict is not None:
            return facts, verdict, []
        return facts, None, self._items(env, facts)

    def _facts(self, env: Envelope, listener) -> Facts:
        members = self.members()
        trusted = listener.trusts(env.peer_ip)
        enc = encryption.check(env.data)
        status, domains = "none", frozenset()
        if not (trusted or env.auth_user):
            m = self.manifest()
            dnsfunc = D.manifest_dnsfunc(m.dkim_records() if m else {}, fallback=self.dnsfunc_fallback)
            res = D.verify_dkim(env.data, dnsfunc)
            status, domains = res.status, frozenset(res.passing_domains)
        return gather(env, listener=listener.name, trusted=trusted, own_domains=self.config.domains,
                      members=members, encryption=enc, dkim_status=status, dkim_domains=domains,
                      non_member_policy=self.config.non_member_policy)

    def _items(self, env: Envelope, f: Facts) -> list[Item]:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rcpt, cls in f.recipients.items():
            groups[(cls, domain_of(rcpt) or "")].append(rcpt)
        items: list[Item] = []
        mode = self.config.local_delivery
        for (cls, domain), rcpts in groups.items():
            if cls == MEMBER:
                member = self.manifest().member(domain)
                body, meta = self.transformer.outbound(env.data, f, domain, rcpts)
                hop = smtp_hop(member.gateway[0], member.gateway[1], member.tls_pin)
                items.append(Item(env.mail_from, [(r, hop) for r in rcpts], body, {**meta, "route": "member"}))
            elif cls == OWN:
                for r in rcpts:
                    if f.origin == OFFICE:
                        body, meta = self.transformer.local(env.data, f, r, mode)
                    else:
                        body, meta = self.transformer.inbound(env.data, f, r, mode)
                    items.append(Item(env.mail_from, [(r, self._local_hop(r))], body,
                                      {**meta, "route": "local"}))
            elif cls == OTHER:
                if self.config.relay_to is None:
                    raise PolicyRefusal("no route to non-member domains is configured", code=550,
                                        enhanced="5.7.1")
                items.append(Item(env.mail_from, [(r, relay_hop(*self.config.relay_to)) for r in rcpts],
                                  env.data, {"route": "non-member", "encrypted_to": []}))
        return items

    def _local_hop(self, rcpt: str) -> str:
        if self.config.local_delivery == "relay":
            return relay_hop(*self.config.relay_to)
        return maildir_hop(rcpt)
