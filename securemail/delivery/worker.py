"""The delivery stage's loop: claim due deliveries, send each (message, next hop) group, settle.

One ``run_once`` claims up to ``batch`` deliveries under a lease, groups them
by message and next hop (so one SMTP transaction carries every recipient of a
message that goes to the same gateway), delivers the groups concurrently
(at most ``concurrency`` at a time) and settles every claim:

* delivered -> ``mark_delivered``
* temporary -> ``defer`` to the next time of the retry schedule, or, once the
  schedule gives up, ``bounce`` with a DSN (status 4.4.7 unless the remote gave one)
* permanent -> ``bounce`` with a DSN
* a next hop that cannot be parsed -> ``hold`` (moved aside, never dropped)

Before a member gateway is contacted, ``pre_send(claim)`` may veto a
recipient (its key expired or was revoked while the mail waited): the
delivery is bounced with a DSN and nothing is sent, in clear or otherwise.
It may also answer with an ``Outcome`` (the federation manifest expired):
the delivery is settled with it, deferred, and nothing is sent.
A DSN is enqueued, after its bounce is committed, through ``bounce_sender``
with the null envelope sender; none is made for a null-sender message.

An ``lmtp`` hop (``delivery.local = "lmtp"``) is settled recipient by recipient:
the LMTP server answers for each one after the body (``delivery/lmtp.py``).

A ``relay-decrypt`` or ``lmtp-decrypt`` hop (member mail for the office,
encrypted to our domain key) is opened by ``open_sealed`` in memory, just
before the office MTA or the LMTP server gets it: decrypted plaintext is never
written to the queue. Its DSN, if any, is
built from the queued (encrypted) message's headers.
Database failures surface as ``TemporaryFailure``; ``run`` backs off on them.
Each settle that took is reported: to ``metrics`` (by outcome and recipient domain; the time
from queueing to delivery) and as a log event (``delivered``, ``deferred``, ``bounced``, ``held``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from securemail.audit import AuditLog
from securemail.config import Retry
from securemail.delivery.dsn import BounceSender, build_dsn, header_block
from securemail.delivery.lmtp import deliver_lmtp
from securemail.transform.hops import Hop, LmtpHop, MaildirHop, RelayHop, SmtpHop, parse_hop
from securemail.delivery.maildir import deliver_maildir
from securemail.delivery.outcome import DELIVERED, PERMANENT, Outcome, permanent, temporary
from securemail.delivery.smtp import TlsClientCert, client_tls_context, deliver_smtp
from securemail.errors import SecureMailError, TemporaryFailure, UsageError
from securemail.logs import event
from securemail.queue import Claim, Queue, next_retry
from securemail.queue.batch import GroupCommit

if TYPE_CHECKING:
    from securemail.metrics import Metrics

log = logging.getLogger(__name__)

PreSend = Callable[[Claim], "str | Outcome | None | Awaitable[str | Outcome | None]"]

EXPIRED_STATUS = "4.4.7"      # RFC 3463: delivery time expired
PERMANENT_STATUS = "5.0.0"
VETO_STATUS = "5.7.0"         # security: the recipient key is no longer usable
BAD_HOP = "invalid next hop"
NO_MAILDIR = "local delivery is not configured"
INTERNAL = "internal delivery error"
PRE_SEND_FAILED = "recipient key check failed; will retry"
NO_DOMAIN_KEY = "no domain key here to decrypt mail for the office"
OPEN_FAILED = "the message could not be decrypted for the office"
SMTP_TIMEOUT = 60.0           # seconds per next-hop SMTP step (connect, each command, DATA)
BODY_WITH_CLAIM = 256 << 10   # messages up to this size are read with their claim, in one query
SETTLE_LINGER = 0.02          # seconds settles gather before their commit (nobody waits on them)
CHECKPOINT_EVERY = 1.0        # seconds between two SQLite checkpoints run by the workers


class DeliveryWorker:
    """Delivers what the queue says is due; several workers (owners) may share one queue."""

    def __init__(self, queue: Queue, *, owner: str, helo: str,
                 maildir_root: Path | None = None, lease_seconds: float = 300.0,
                 retry: Retry = Retry(), batch: int = 50, concurrency: int = 10,
                 timeout: float = SMTP_TIMEOUT, poll_interval: float = 1.0, max_backoff: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 deliver_smtp: Callable[..., Awaitable[Outcome]] = deliver_smtp,
                 deliver_maildir: Callable[..., Outcome] = deliver_maildir,
                 deliver_lmtp: Callable[..., Awaitable[Outcome]] = deliver_lmtp,
                 bounce_sender: BounceSender | None = None, pre_send: PreSend | None = None,
                 tls_client_cert: TlsClientCert | Callable[[], TlsClientCert] | None = None,
                 member_pins: Callable[[SmtpHop], SmtpHop] | None = None,
                 reporting_mta: str | None = None, audit_log: AuditLog | None = None,
                 open_sealed: Callable[[bytes], bytes] | None = None, metrics: Metrics | None = None) -> None:
        if lease_seconds <= timeout:
            raise UsageError("lease_seconds must exceed the SMTP timeout")
        self.queue, self.owner, self.helo = queue, owner, helo
        self.maildir_root = maildir_root
        self.lease_seconds, self.retry, self.batch = lease_seconds, retry, batch
        self.timeout, self.poll_interval, self.max_backoff = timeout, poll_interval, max_backoff
        self.clock = clock
        self.deliver_smtp, self.deliver_maildir = deliver_smtp, deliver_maildir
        self.deliver_lmtp = deliver_lmtp
        self.bounce_sender, self.pre_send = bounce_sender, pre_send
        self.tls_client_cert = tls_client_cert  # or a function: the certificate to show now (rotation.py)
        self.member_pins = member_pins          # a member hop with the pins the manifest lists now
        self.open_sealed = open_sealed  # queued ciphertext -> the office's message, in memory
        self.reporting_mta = reporting_mta or helo
        self.audit_log = audit_log if audit_log is not None else queue.audit_log
        # delivered/deferred settles of concurrent groups share transactions (one fsync)
        self._settles = GroupCommit(lambda ops: self.queue.settle_many(ops), linger=SETTLE_LINGER)
        self.concurrency = concurrency
        self.metrics = metrics
        self._checkpointed = 0.0

    @classmethod
    def from_config(cls, config, queue: Queue, *, owner: str, **kwargs) -> "DeliveryWorker":
        """A worker with the gateway's settings (``GatewayConfig``); ``kwargs`` add or override.

        The SMTP step timeout is ``SMTP_TIMEOUT``, or a quarter of a shorter lease, so that any
        ``delivery.lease_seconds`` an operator sets leaves room for a whole attempt.
        """
        settings = dict(helo=config.hostname, maildir_root=Path(config.home) / "Maildir",
                        lease_seconds=config.lease_seconds, retry=config.retry,
                        poll_interval=config.poll_interval,
                        timeout=min(SMTP_TIMEOUT, config.lease_seconds / 4),
                        tls_client_cert=client_tls_context(config.tls_cert, config.tls_key))  # members pin it
        return cls(queue, owner=owner, **{**settings, **kwargs})

    # --- the loop -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; back off (doubling, up to max_backoff) while the DB fails."""
        failures = 0
        while not stop.is_set():
            try:
                n = await self.run_once()
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one batch
                failures += 1
                wait = min(self.max_backoff, self.poll_interval * 2 ** min(failures, 16))
                if isinstance(err, TemporaryFailure):
                    log.warning("delivery %s: queue unavailable (%s); next try in %.1fs",
                                self.owner, err.detail or err, wait)
                else:
                    log.exception("delivery %s: unexpected error; next try in %.1fs", self.owner, wait)
            else:
                failures = 0
                wait = 0.0 if n >= self.batch else self.poll_interval
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Claim one batch, deliver and settle it; returns how many deliveries were claimed."""
        claims, checked = await asyncio.to_thread(self._claim)
        groups: dict[tuple[str, str], list[Claim]] = {}
        for c in claims:
            groups.setdefault((c.message_id, c.next_hop), []).append(c)
        slots = asyncio.Semaphore(self.concurrency)
        results = await asyncio.gather(*(self._slot(slots, g, checked) for g in groups.values()),
                                       return_exceptions=True)
        failure: TemporaryFailure | None = None
        for r in results:
            if isinstance(r, TemporaryFailure):
                failure = failure or r
            elif isinstance(r, BaseException):
                log.error("delivery %s: group failed", self.owner, exc_info=r)
        if failure is not None:
            raise failure
        return len(claims)

    def _claim(self) -> tuple[list[Claim], dict[str, tuple[bool, object]]]:
        """In one trip to a thread: claim a batch (small bodies included) and run a synchronous
        ``pre_send`` on each member delivery: {delivery id: (raised?, reason or exception)}."""
        now = time.monotonic()
        if now - self._checkpointed >= CHECKPOINT_EVERY:
            self._checkpointed = now  # off the intake's commits, which do not checkpoint (db.py)
            self.queue.checkpoint()
        claims = self.queue.claim(self.owner, self.batch, self.lease_seconds, with_bodies=BODY_WITH_CLAIM)
        checked: dict[str, tuple[bool, object]] = {}
        if self.pre_send is None or inspect.iscoroutinefunction(self.pre_send):
            return claims, checked
        for c in claims:
            if c.next_hop.startswith("smtp:"):
                try:
                    checked[c.delivery_id] = (False, self.pre_send(c))
                except Exception as err:  # noqa: BLE001 - settled as a failed check, see _vet
                    checked[c.delivery_id] = (True, err)
        return claims, checked

    async def _slot(self, slots: asyncio.Semaphore, claims: list[Claim],
                    checked: dict[str, tuple[bool, object]] | None = None) -> None:
        async with slots:  # a slot is a session to the next hop: not held while the settle commits
            settle = await self._group(claims, checked or {})
        if settle is not None:
            await settle

    # --- one (message, next hop) group -------------------------------------------------
    async def _group(self, claims: list[Claim], checked: dict[str, tuple[bool, object]]):
        """Send one group; returns its settle, still to be awaited (after the slot is free)."""
        first = claims[0]
        try:
            hop = parse_hop(first.next_hop)
        except UsageError:
            return await self._hold(claims, BAD_HOP)
        if isinstance(hop, MaildirHop) and self.maildir_root is None:
            return await self._hold(claims, NO_MAILDIR)
        if isinstance(hop, (RelayHop, LmtpHop)) and hop.decrypt and self.open_sealed is None:
            return await self._hold(claims, NO_DOMAIN_KEY)
        if isinstance(hop, SmtpHop) and self.member_pins is not None:  # rotated while it waited
            hop = self.member_pins(hop)
        body = first.body
        if body is None:
            body = await asyncio.to_thread(self.queue.body, first.message_id)
        if body is None:
            log.warning("delivery %s: message %s is gone", self.owner, first.message_id)
            return
        if self.clock() + self.timeout >= min(c.lease_until for c in claims):
            log.warning("delivery %s: lease too short for message %s; left for a later claim",
                        self.owner, first.message_id)
            return
        if isinstance(hop, SmtpHop) and self.pre_send is not None:
            claims = await self._vet(hop, claims, body, checked)
        if claims:
            outcome = await self._send(hop, first.sender, [c.recipient for c in claims], body)
            return self._settle(hop, claims, outcome, body)
        return None

    async def _vet(self, hop: Hop, claims: list[Claim], body: bytes,
                   checked: dict[str, tuple[bool, object]]) -> list[Claim]:
        """Ask ``pre_send`` about each recipient (or take its answer from the claim); bounce the
        vetoed, defer on a failed check."""
        ok: list[Claim] = []
        vetoed: dict[str, list[tuple[Claim, Outcome]]] = {}
        for c in claims:
            try:
                if c.delivery_id in checked:
                    raised, reason = checked[c.delivery_id]
                    if raised:
                        raise reason  # type: ignore[misc]
                elif inspect.iscoroutinefunction(self.pre_send):
                    reason = await self.pre_send(c)
                else:
                    reason = await asyncio.to_thread(self.pre_send, c)
                if inspect.isawaitable(reason):
                    reason = await reason
            except Exception:  # noqa: BLE001 - a failed check must not send
                log.exception("delivery %s: pre_send failed for %s", self.owner, c.delivery_id)
                await self._settle(hop, [c], temporary(PRE_SEND_FAILED), body)
                continue
            if isinstance(reason, Outcome):  # deferred, not bounced: nothing sent
                await self._settle(hop, [c], reason, body)
            elif reason:
                log.info("delivery %s: %s vetoed before sending: %s", self.owner, c.delivery_id, reason)
                vetoed.setdefault(str(reason), []).append((c, permanent(str(reason))))
            else:
                ok.append(c)
        for reason, items in vetoed.items():
            await self._bounce(items, body, VETO_STATUS, reason, "vetoed", hop)
        return ok

    async def _send(self, hop: Hop, sender: str, rcpts: list[str], body: bytes) -> Outcome:
        try:
            if isinstance(hop, MaildirHop):
                return await asyncio.to_thread(self.deliver_maildir, self.maildir_root, hop.address,
                                               body, clock=self.clock, hostname=self.helo)
            if isinstance(hop, (RelayHop, LmtpHop)) and hop.decrypt:
                try:  # the plaintext lives in this frame only; the settle keeps the queued bytes
                    body = await asyncio.to_thread(self.open_sealed, body)
                except SecureMailError as err:
                    log.warning("delivery %s: cannot decrypt for the office: %s", self.owner, err.message)
                    return temporary(OPEN_FAILED) if err.temporary else permanent(OPEN_FAILED)
            if isinstance(hop, LmtpHop):
                return await self.deliver_lmtp(hop, sender, rcpts, body, helo=self.helo, timeout=self.timeout)
            return await self.deliver_smtp(hop, sender, rcpts[0] if len(rcpts) == 1 else rcpts,
                                           body, helo=self.helo, timeout=self.timeout,
                                           tls_client_cert=cert() if callable(cert := self.tls_client_cert) else cert)
        except Exception:  # noqa: BLE001 - a bug in one delivery defers it, never drops it
            log.exception("delivery %s: delivering via %s failed", self.owner, _label(hop))
            return temporary(INTERNAL)

    # --- settling ------------------------------------------------------------------------
    async def _settle(self, hop: Hop | None, claims: Sequence[Claim], outcome: Outcome,
                      body: bytes) -> None:
        now = self.clock()
        bounced: list[tuple[Claim, Outcome]] = []
        expired: list[tuple[Claim, Outcome]] = []
        for c in claims:
            o = outcome.for_recipient(c.recipient)
            fields = {"hop": _label(hop), "code": o.code, "status": o.status}
            if o.kind == DELIVERED:
                (ok,) = await self._settles.submit(
                    [(c, self.queue.delivered_values(), self._spec("delivered", c, fields))])
                self._settled(c, ok, "delivered", o.code, hop)
            elif o.kind == PERMANENT:
                bounced.append((c, o))
            else:
                r = self.retry
                at = next_retry(c.attempts, r.first, r.cap, r.give_up_after,
                                created_at=c.created_at, now=now)
                if at is None:
                    expired.append((c, o))
                    continue
                (ok,) = await self._settles.submit(
                    [(c, self.queue.deferred_values(o.describe(), at),
                      self._spec("deferred", c, {**fields, "retry_at": at}))])
                self._settled(c, ok, "deferred", o.code, hop)
        dsns: dict[tuple[str, str, str], list[tuple[Claim, Outcome]]] = {}
        for (c, o) in bounced:
            status = o.status if (o.status or "").startswith("5") else PERMANENT_STATUS
            dsns.setdefault((status, o.describe(), "permanent"), []).append((c, o))
        for (c, o) in expired:
            status = o.status if (o.status or "").startswith("4") else EXPIRED_STATUS
            reason = f"gave up after {c.attempts} attempts; last error: {o.describe()}"
            dsns.setdefault((status, reason, "expired"), []).append((c, o))
        for (status, reason, why), items in dsns.items():
            await self._bounce(items, body, status, reason, why, hop)

    async def _bounce(self, items: list[tuple[Claim, Outcome]], body: bytes, status: str,
                      reason: str, why: str, hop: Hop | None = None) -> None:
        """Bounce each claim (lease permitting), then enqueue one DSN for those that bounced."""
        done: list[tuple[Claim, Outcome]] = []
        for c, o in items:
            fields = {"hop": _label(hop), "code": o.code, "status": status, "why": why,
                      "dsn": c.sender != ""}
            ok = await self._call(self.queue.bounce, c, reason, audit=self._spec("bounced", c, fields))
            self._settled(c, ok, "bounced", o.code, hop, why)
            if ok:
                done.append((c, o))
        if not done or done[0][0].sender == "":
            return
        c, o = done[0]
        dsn = build_dsn(header_block(body), c.sender, [d.recipient for d, _ in done], reason,
                        self.reporting_mta, c.created_at, self.clock(), status,
                        remote_reply=(o.code, o.message) if o.code is not None else None)
        if self.bounce_sender is None:
            log.error("delivery %s: no bounce sender; DSN for message %s not sent", self.owner, c.message_id)
            return
        try:
            await asyncio.to_thread(self.bounce_sender, dsn, c.sender)
        except Exception as err:  # noqa: BLE001 - the bounce is committed; record the lost DSN
            log.error("delivery %s: DSN for message %s could not be queued: %r", self.owner, c.message_id, err)
            self._note("dsn_failed", message_id=c.message_id, delivery_id=c.delivery_id)

    async def _hold(self, claims: list[Claim], reason: str) -> None:
        log.error("delivery %s: holding message %s: %s", self.owner, claims[0].message_id, reason)
        for c in claims:
            ok = await self._call(self.queue.hold, c, reason, audit=self._spec("held", c, {"reason": reason}))
            self._settled(c, ok, "held", None, None, reason)

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _spec(self, kind: str, c: Claim, fields: dict):
        """The queue's audit argument: metadata only (domain, hop, codes), never addresses or text."""
        if self.queue.audit_log is None:
            return None
        return kind, {**fields, "rcpt_domain": c.recipient.rpartition("@")[2].lower(),
                      "attempts": c.attempts, "owner": self.owner}

    def _note(self, kind: str, **fields) -> None:
        if self.audit_log is None:
            return
        try:
            self.audit_log.append(kind, **fields)
        except SecureMailError:
            log.warning("audit record %s could not be written", kind)

    def _settled(self, c: Claim, ok: bool, outcome: str, code: int | None, hop: Hop | None,
                 why: str = "") -> None:
        """Report a settle that took (metrics; a log event with the envelope and hop, never the
        message); warn of one whose lease was lost."""
        if not ok:
            log.warning("delivery %s: lease on %s was lost before settling; another worker owns it",
                        self.owner, c.delivery_id)
            return
        took, delivered = self.clock() - c.created_at, outcome == "delivered"
        if self.metrics is not None:
            self.metrics.settled(outcome, c.recipient.rpartition("@")[2].lower(), took if delivered else None)
        event(log, outcome, level=logging.INFO if delivered else logging.WARNING, queue_id=c.message_id,
              peer=_label(hop) or None, sender=c.sender, recipients=[c.recipient], verdict=outcome,
              reason=why or None, reply_code=code, duration=round(took, 3))


def _label(hop: Hop | None) -> str:
    """The hop for logs and the audit: kind, host and port; a mailbox is just "maildir", an LMTP
    unix socket "lmtp:unix"."""
    if hop is None:
        return ""
    if isinstance(hop, LmtpHop) and hop.path:
        return "lmtp:unix"
    return "maildir" if isinstance(hop, MaildirHop) else f"{hop.kind}:{hop.host}:{hop.port}"
