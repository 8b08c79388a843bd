"""The CPU-bound middle of the DATA path: facts → policy chain → crypto stage, as one pure call.

``CryptoStage.decide(envelope, listener_name)`` returns a ``Decision``: a
refusal (``verdict``) or the bodies to queue (``items``). It touches no
socket and writes no queue row, so it runs wherever there is a core: in a
thread of the SMTP process, or in a crypto worker process (procs/cpu.py),
each of which builds its own stage from the same home. What it returns, and
any SecureMailError it raises, can cross a process boundary (pickle).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..config import GatewayConfig
from ..crypto import dkim as D
from .hops import Hop, local_hop, relay_hop, smtp_hop
from ..envelope import Envelope
from ..errors import PolicyRefusal
from ..manifest_source import ManifestSource
from ..mail.headers import HeaderBlock, HeaderBlockError, parse_header_block
from ..policy import Verdict, encryption, rules
from ..policy.address import MEMBER, OTHER, OWN, domain_of
from ..policy.facts import OFFICE, Facts, gather
from ..queue import NewMessage, replay
from ..smtp import replies
from .routes import Transformer, fields_of

if TYPE_CHECKING:
    from ..metrics import Metrics

# The policy chain in two phases (rules.CHAIN keeps its order within each): DKIM, the costly part,
# runs only for a message every other rule has let through.
DKIM_RULES = ("member_dkim",)
BEFORE_DKIM = [(name, rule) for name, rule in rules.CHAIN if name not in DKIM_RULES]
DKIM_CHAIN = [(name, rule) for name, rule in rules.CHAIN if name in DKIM_RULES]


@dataclass(frozen=True)
class Decision:
    """What the stage concluded about one message: refused (verdict) or the messages to queue."""
    verdict: Verdict | None
    items: list[NewMessage] = field(default_factory=list)
    sender_domain: str = ""
    origin: str = ""


class CryptoStage:
    def __init__(self, *, config: GatewayConfig, manifest: ManifestSource,
                 transformer: Transformer, metrics: Metrics | None = None) -> None:
        self.config = config
        self.manifest = manifest            # () -> Manifest | None, the installed one; .expired()
        self.transformer = transformer
        self.metrics = metrics              # the time of DKIM checks and of each OpenPGP transform
        self._members: tuple[object, frozenset[str]] = (object(), frozenset())

    def members(self) -> frozenset[str]:
        """The other member domains of the installed manifest (computed once per manifest)."""
        m = self.manifest()
        if self._members[0] is not m:
            self._members = (m, frozenset(d for d in (m.members if m else {}) if d not in self.config.domains))
        return self._members[1]

    def decide(self, env: Envelope, listener_name: str) -> Decision:
        """The header block is parsed once, whole, within the limits (or refused, nothing queued);
        then the rules that need no DKIM; DKIM is verified last, only when a DKIM rule would refuse
        the message without it (mail from a member domain that passed every other rule)."""
        lim = self.config.limits
        try:
            block = parse_header_block(env.data, max_bytes=lim.header_bytes, max_fields=lim.header_fields)
        except HeaderBlockError as e:
            return Decision(Verdict("header_block", e.smtp_reply(), e.detail or e.message))
        facts = self._facts(env, self.config.listener(listener_name), block)
        verdict = rules.evaluate(facts, BEFORE_DKIM)
        if verdict is None and rules.evaluate(facts, DKIM_CHAIN) is not None:
            facts = self._with_dkim(env, facts)
            verdict = rules.evaluate(facts, DKIM_CHAIN)
        summary = dict(sender_domain=facts.sender_domain or "", origin=facts.origin)
        if verdict is not None:
            return Decision(verdict, [], **summary)
        return Decision(None, self._items(env, facts), **summary)

    def _facts(self, env: Envelope, listener, block: HeaderBlock) -> Facts:
        return gather(env, listener=listener.name, trusted=listener.trusts(env.peer_ip),
                      own_domains=self.config.domains, members=self.members(),
                      encryption=encryption.check(env.data, block), non_member_policy=self.config.non_member_policy,
                      block=block, cert_domains=self._cert_domains(env),
                      manifest_expired=self.manifest.expired())

    def _replay(self, env: Envelope, f: Facts) -> tuple[str, float] | None:
        """What makes a copy of this message from a member a replay, for the sender's retry lifetime."""
        domain = rules.member_domain(f)
        if domain is None:
            return None
        ids = f.block.texts("message-id") if f.block is not None else ()
        return replay.message_key(domain, ids, env.data), self.config.retry.give_up_after

    def _cert_domains(self, env: Envelope) -> frozenset[str] | None:
        """The member domains pinned (manifest tls_pin) to the session's client certificate; None: none shown."""
        if env.tls_peer_pin is None:
            return None
        m = self.manifest()
        return m.pinned_domains(env.tls_peer_pin) if m else frozenset()

    def _with_dkim(self, env: Envelope, f: Facts) -> Facts:
        """``f`` with the DKIM result of the signatures by the From domain, the only ones policy reads
        (bounded: crypto/dkim.py MAX_SIGNATURES, MAX_SIGNED_NAMES, MAX_SIGNATURE_BYTES)."""
        m = self.manifest()
        dnsfunc = D.manifest_dnsfunc(m.dkim_records() if m else {})
        start = time.perf_counter()
        res = D.verify_dkim(env.data, dnsfunc, block=f.block, domains=(f.from_domain,) if f.from_domain else ())
        if self.metrics is not None:
            self.metrics.dkim("verify", time.perf_counter() - start, res.status)
        return replace(f, dkim_status=res.status, dkim_domains=frozenset(res.passing_domains))

    def _items(self, env: Envelope, f: Facts) -> list[NewMessage]:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rcpt, cls in f.recipients.items():
            groups[(cls, domain_of(rcpt) or "")].append(rcpt)
        seen = self._replay(env, f)

        def item(pairs: list[tuple[str, Hop]], body: bytes, meta: dict) -> NewMessage:
            """One message to queue, with its "accepted" audit record (metadata only)."""
            audit = {"route": meta.get("route"), "sender_domain": f.sender_domain or "",
                     "recipient_domains": sorted({domain_of(r) or "" for r, _ in pairs}),
                     "encrypted_to": meta.get("encrypted_to", []), "origin": f.origin, "peer": env.peer_ip}
            return NewMessage(env.mail_from, pairs, body, peer=env.peer_ip, meta=meta, audit=("accepted", audit),
                              replay=replay.seen_for(seen, (r for r, _ in pairs)))
        items: list[NewMessage] = []
        mode = self.config.local_delivery
        for (cls, domain), rcpts in groups.items():
            if cls == MEMBER:
                member = self.manifest().member(domain)
                body, meta = self._timed("outbound", self.transformer.outbound, env.data, domain, rcpts,
                                         sender_domain=f.from_domain, encryption=f.encryption,
                                         fields=fields_of(env.data, f), block=f.block)
                hop = smtp_hop(member.gateway[0], member.gateway[1], member.tls_pins)
                items.append(item([(r, hop) for r in rcpts], body, {**meta, "route": "member"}))
            elif cls == OWN:
                for r in rcpts:
                    if f.origin == OFFICE:
                        body, meta = self._timed("local", self.transformer.local, env.data, f, r, mode)
                    else:
                        body, meta = self._timed("inbound", self.transformer.inbound, env.data, f, r, mode)
                    hop = self._local_hop(r, decrypt=bool(meta.get("decrypt_at_delivery")))
                    items.append(item([(r, hop)], body, {**meta, "route": "local"}))
            elif cls == OTHER:
                if self.config.relay_to is None:
                    raise PolicyRefusal(reply=replies.NO_NON_MEMBER_ROUTE)
                items.append(item([(r, relay_hop(*self.config.relay_to)) for r in rcpts],
                                  env.data, {"route": "non-member", "encrypted_to": []}))
        return items

    def _timed(self, operation: str, transform, *args, **kwargs):
        """``transform(*args, **kwargs)``, its time counted as ``operation`` (outbound: encrypt, sign
        and DKIM-sign for a member; inbound: decrypt and re-encrypt member mail; local: office mail)."""
        start = time.perf_counter()
        out = transform(*args, **kwargs)
        if self.metrics is not None:
            self.metrics.crypto(operation, time.perf_counter() - start)
        return out

    def _local_hop(self, rcpt: str, decrypt: bool = False) -> Hop:
        return local_hop(self.config, rcpt, decrypt)  # delivery.local: relay, lmtp or maildir
