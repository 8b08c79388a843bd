"""The DATA path: facts → policy chain → crypto stage → durable queue → 250.

``Pipeline.decide_rcpt`` and ``Pipeline.accept`` are what the SMTP adapter
calls. The reply 250 is given only after every queue item of the message is
committed (one transaction); any refusal is audited with its rule and reason,
never with content. The CPU work (MIME parsing, DKIM, OpenPGP: ``CryptoStage``)
runs off the event loop: in crypto worker processes (procs/cpu.py), or in a
thread when there are none. Whichever ran it, the messages it made are
committed here, in the group commit.

Every answer is also reported, metadata only: to ``metrics`` (metrics.py: counted by listener,
verdict and reason class, the time to the 250) and as one log event (logs.py: ``accepted``,
``refused``, ``held``, ``deferred``; ``rcpt-refused`` at RCPT) with the queue id, listener, peer,
envelope addresses (shown as ``[log] addresses`` says), verdict, rule, reply code and duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from ..audit import AuditLog
from ..envelope import Envelope
from ..errors import KeyChanged, Reply, SecureMailError
from ..logs import event
from ..policy import Verdict
from ..policy.address import domain_of
from ..policy.recipient import decide_rcpt
from ..queue import Queue
from ..queue.batch import GroupCommit
from ..smtp import replies
from .stage import CryptoStage, Decision

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

RunStage = Callable[[Envelope, str], Awaitable[Decision]]


class Pipeline:
    def __init__(self, *, config, stage: CryptoStage, queue: Queue, audit: AuditLog,
                 run_stage: RunStage | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics, self.clock = metrics, clock
        self.stage = stage
        self.queue = queue
        self.audit = audit
        # (envelope, listener name) -> Decision, off the event loop
        self.run_stage = run_stage or (lambda env, name: asyncio.to_thread(stage.decide, env, name))
        self.commit = GroupCommit(queue.enqueue_many)

    def members(self) -> frozenset[str]:
        return self.stage.members()

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
            if self.metrics is not None:
                self.metrics.recipient_refused(listener.name, v.rule)
            event(log, "rcpt-refused", listener=listener.name, peer=session.peer_ip, sender=session.mail_from,
                  recipients=[address], verdict="refused", reason=v.rule, reply_code=v.reply.code)
            return v.reply
        return decide

    # --- DATA -----------------------------------------------------------------------
    def data_acceptor(self, listener):
        async def accept(env: Envelope) -> str:
            return await self.accept(env, listener)
        return accept

    async def accept(self, env: Envelope, listener) -> str:
        """The reply to a message's DATA, reported (metrics, log event) whatever it is."""
        try:
            reply, verdict, rule, ids = await self._accept(env, listener)
        except Exception as e:  # the handler answers it (for_exception): 451 and the like
            code = e.smtp_reply().code if isinstance(e, SecureMailError) else 451
            self._report(env, listener.name, "deferred", "temporary", code, [])
            raise
        self._report(env, listener.name, verdict, rule, reply.code, ids)
        return reply

    async def _accept(self, env: Envelope, listener) -> tuple[Reply, str, str, list[str]]:
        """(reply, verdict, rule, queue ids) for the message."""
        try:  # one trip off the event loop for facts, policy and the crypto stage
            d = await self.run_stage(env, listener.name)
        except KeyChanged as e:  # never sent to the new key silently: the office MTA keeps it and retries
            log.warning("holding mail for %s: key changed from %s to %s; accept with "
                        "'securemail keys accept %s %s'", e.address, e.pinned, e.offered, e.address, e.offered)
            self._audit("key-change-held", address=e.address, pinned=e.pinned, offered=e.offered,
                        peer=env.peer_ip)
            if self.metrics is not None:
                self.metrics.key_change_held()
            return replies.KEY_CHANGED_HELD, "held", "key_changed", []
        except SecureMailError as e:
            if not e.temporary:
                return self._refuse(Verdict("crypto", e.smtp_reply(), e.message), env)
            raise
        if d.verdict is not None:
            return self._refuse(d.verdict, env)
        ids = await self.commit.submit(d.items)  # the one way a message is queued
        return replies.queued(ids), "accepted", "", ids

    def _refuse(self, v: Verdict, env: Envelope) -> tuple[Reply, str, str, list[str]]:
        self._audit("refused", rule=v.rule, reason=v.reason, peer=env.peer_ip,
                    sender_domain=domain_of(env.mail_from) or "",
                    recipient_domains=sorted({domain_of(r) or "" for r in env.rcpt_tos}))
        return v.reply, "refused", v.rule, []

    def _report(self, env: Envelope, listener: str, verdict: str, rule: str, code: int, ids: list[str]) -> None:
        """One answer to the metrics and the log: metadata only, never a header or the body."""
        took = self.clock() - env.received_at if env.received_at else None
        if self.metrics is not None:
            self.metrics.answered(listener, verdict, rule, took if verdict == "accepted" else None)
        event(log, verdict, level=logging.WARNING if verdict in ("held", "deferred") else logging.INFO,
              queue_id=",".join(ids) or None, listener=listener, peer=env.peer_ip, sender=env.mail_from,
              recipients=env.rcpt_tos, verdict=verdict, reason=rule or None, reply_code=code,
              duration=round(took, 6) if took is not None else None)

    def _audit(self, kind: str, **fields) -> None:
        try:
            self.audit.append(kind, **fields)
        except SecureMailError:
            log.warning("audit record %s could not be written", kind)
