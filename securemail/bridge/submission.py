"""The bridge's SMTP submission listener: plain MIME from any mail client leaves signed and encrypted.

A small listener on the person's own machine, for mail clients without OpenPGP. It is the gateway's
hardened SMTP adapter (smtp/server.py ``make_server``, smtp/handler.py, smtp/auth.py) with:

- **loopback only** unless ``allow_remote`` (an IP literal in 127.0.0.0/8 or ::1; a name is refused,
  it could resolve anywhere);
- **STARTTLS, then AUTH PLAIN or LOGIN, before MAIL** (the local credentials, checked off the event
  loop with a failure budget, authlimit.py). STARTTLS rather than implicit TLS: neomutt
  (``ssl_starttls``), Thunderbird ("STARTTLS"), Apple Mail and Outlook all offer it on a plain port,
  as Proton Bridge's 1025 does, and the adapter already hardens it (pipelined plaintext dropped);
- **the sender is the one set up**: another MAIL FROM, or a From (or Sender) field naming anyone
  else, is refused ``550 5.7.1``;
- **a key for every recipient at RCPT**: ``lookup(address)`` gives the key ``securemail send`` would
  use (the key store, its pins, the federation's directory: ``key_lookup``) or raises a securemail
  error saying why, answered ``550 5.7.1`` naming the address. Nothing is ever sent in clear;
- **at DATA**, the keys are looked up again (a key revoked meanwhile is not used), the copies are
  planned (submission_copies.py: one for To and Cc, encrypted to them and to the sender; one per
  Bcc, encrypted to that recipient alone), each is signed and encrypted off the event loop, one at a
  time, and submitted upstream over verified STARTTLS and AUTH (submission_upstream.py). 250 only
  when the submission server took every copy; otherwise its reply, naming who already has a copy.

Bounded cost before 250: the adapter's limits (``limits.message_size``, ``limits.recipients``, line
lengths, timeouts), the header block parsed once within ``limits.header_bytes`` and
``limits.header_fields``, one lookup per recipient (a directory request is bounded by the
locator's timeout), at most one copy per recipient, built and sent one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from securemail.config import AuthBudget, Limits
from securemail.authlimit import AuthGuard
from securemail.crypto.keys import Key
from securemail.delivery.outcome import DELIVERED, Outcome
from securemail.envelope import Envelope
from securemail.errors import (ConfigError, KeyNotFound, KeyUnusable, PolicyRefusal, Reply, SecureMailError,
                               TemporaryFailure, UsageError)
from securemail.keys.locate import Locator
from securemail.keys.store import KeyStore
from securemail.mail.headers import HeaderBlock
from securemail.mail.outgoing import addr, recipient_key
from securemail.policy.facts import Headers
from securemail.smtp import replies
from securemail.smtp.handler import GatewayHandler, SessionInfo
from securemail.smtp.server import SMTPServer, make_server

from .submission_copies import Copy, inner, outer_headers, parsed, plan, sealed
from .submission_upstream import Session, Upstream, session

log = logging.getLogger(__name__)

Lookup = Callable[[str], Key]


def is_loopback(host: str) -> bool:
    """Is ``host`` an IP literal of the loopback interface (127.0.0.0/8, ::1)?"""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def key_lookup(store: KeyStore, locator: Locator | None = None,
               clock: Callable[[], float] = time.time) -> Lookup:
    """``address -> Key`` as ``securemail send`` finds recipients' keys: a missing or stale key is
    first looked up in the federation's directory (``locator``: app.open_locator, None without a
    manifest), then the key store's pinned, usable key (mail/outgoing.py ``recipient_key``); a
    securemail error names the address and why there is none."""
    def lookup(address: str) -> Key:
        address = addr(address)
        located = None
        if locator is not None:
            try:
                located = locator.ensure(address)
            except TemporaryFailure as e:  # as send: the directory is down, use what is known
                log.warning("cannot look up %s: %s", address, e.message)
        try:
            return recipient_key(store, address, clock())
        except KeyNotFound:
            if located is not None and located.key is None:
                raise KeyNotFound(located.why()) from None
            raise
    return lookup


class _Handler(GatewayHandler):
    """The gateway's handler, refusing at MAIL any sender but the one the bridge was set up with."""

    def __init__(self, identity: str, decide_rcpt, accept_data) -> None:
        super().__init__(decide_rcpt, accept_data)
        self._identity = identity

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> Reply:
        if address.strip().lower() != self._identity:
            log.info("MAIL FROM refused: not the bridge's identity")
            return replies.bridge_not_identity(self._identity)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


class Submission:
    """The local submission listener: ``await start()``, ``host``/``port`` (bound), ``await stop()``."""

    def __init__(self, *, keys: KeyStore, identity: str, signing_key: Key, upstream: Upstream,
                 tls_context, local_username: str, local_password: str,
                 lookup: Lookup | None = None, listen_host: str = "127.0.0.1", listen_port: int = 1025,
                 allow_remote: bool = False, limits: Limits = Limits(), auth_budget: AuthBudget = AuthBudget(),
                 clock: Callable[[], float] = time.time) -> None:
        if not (allow_remote or is_loopback(listen_host)):
            raise ConfigError(f"the bridge listens on loopback only (127.0.0.1 or ::1), not {listen_host!r}; "
                              "another address needs --allow-remote")
        self.identity = addr(identity)
        if not signing_key.is_secret or self.identity not in signing_key.status.addresses:
            raise ConfigError(f"the signing key must be a secret key with a user ID for {self.identity}")
        if not local_username or not local_password:
            raise ConfigError("the bridge's local username and password must not be empty")
        try:
            upstream.tls_context()  # an unreadable cafile is a setup error, not every message's
        except UsageError as e:
            raise ConfigError(e.message) from None
        self.keys, self.signing_key, self.upstream = keys, signing_key, upstream
        self.lookup = lookup or key_lookup(keys, None, clock)
        self.limits, self.clock = limits, clock
        self._guard = AuthGuard(_credentials(local_username, local_password), auth_budget)
        handler = _Handler(self.identity, self._decide_rcpt, self._accept)
        self._server: SMTPServer = make_server(
            handler, listen_host, listen_port, tls_context=tls_context, require_starttls=True,
            auth_required=True, auth_guard=self._guard, limits=limits, hostname="localhost")
        self._crypto: ThreadPoolExecutor | None = None

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        self._crypto = ThreadPoolExecutor(1, thread_name_prefix="bridge-crypto")
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()
        self._guard.close()
        if self._crypto is not None:
            self._crypto.shutdown(wait=False, cancel_futures=True)
            self._crypto = None

    # --- RCPT and DATA -------------------------------------------------------------
    async def _decide_rcpt(self, session: SessionInfo, address: str) -> Reply | None:
        await self._key(address)  # a refusal is raised with its reply (the handler answers it)
        return None

    async def _key(self, address: str) -> Key:
        """The key to encrypt to for ``address``, looked up in a thread; PolicyRefusal naming why."""
        try:
            key = await asyncio.to_thread(self.lookup, address)
        except SecureMailError as e:
            raise PolicyRefusal(reply=replies.bridge_no_key(address, e.message, e.temporary),
                                detail=e.detail) from None
        if key is None:
            raise PolicyRefusal(reply=replies.bridge_no_key(address, "no key found"))
        return key

    async def _accept(self, env: Envelope) -> Reply:
        now = self.clock()
        raw, block = parsed(env.data, self.limits, self.identity, now)
        self._check_sender(block)
        copies = plan(self.identity, block, env.rcpt_tos)
        keys = {self.identity: self.signing_key}
        for address in dict.fromkeys(a for c in copies for a in c.readers if a != self.identity):
            keys[address] = await self._key(address)
        entity, outer = inner(raw, block), outer_headers(raw, block)
        del raw, block
        await self._submit(copies, functools.partial(self._seal, entity, outer, keys, now))
        log.info("submitted %d cop%s for %d recipient(s)", len(copies), "y" if len(copies) == 1 else "ies",
                 sum(len(c.rcpts) for c in copies))
        return replies.BRIDGE_SENT

    def _check_sender(self, block: HeaderBlock) -> None:
        """One From naming the identity alone (as the gateway's ``auth_identity`` reads it), and a
        Sender, if there is one, naming it too."""
        me = (self.identity,)
        froms, senders = Headers.of(block), Headers(block.texts("sender"), 0)
        if len(froms.from_values) != 1 or froms.from_addresses != me or (
                senders.from_values and senders.from_addresses != me):
            raise PolicyRefusal(reply=replies.bridge_not_identity(self.identity), detail="From or Sender")

    def _seal(self, entity: bytes, outer: dict[str, str], keys: dict[str, Key], now: float,
              copy: Copy) -> bytes:
        try:
            return sealed(entity, outer, [(keys[a], a) for a in copy.readers], self.signing_key, now)
        except KeyUnusable as e:
            raise PolicyRefusal(reply=replies.unusable_key(e.message)) from None

    async def _submit(self, copies: list[Copy], seal: Callable[[Copy], bytes]) -> None:
        """Seal and send each copy in turn on one upstream session (opened once the first is sealed)."""
        loop = asyncio.get_running_loop()
        sent: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            up: Session | None = None
            for copy in copies:
                body = await loop.run_in_executor(self._crypto, seal, copy)
                try:
                    if up is None:
                        up = await stack.enter_async_context(session(self.upstream))
                    outcome = await up.send(self.identity, list(copy.rcpts), body)
                except TemporaryFailure as e:
                    if sent:  # the person must know who already has it before sending again
                        raise TemporaryFailure(reply=replies.bridge_upstream_refused(
                            e.code, e.enhanced, "the connection failed", sent), detail=e.detail) from None
                    raise
                del body
                _check(outcome, copy, sent)


def _check(outcome: Outcome, copy: Copy, sent: list[str]) -> None:
    """Append the recipients the server took to ``sent``; raise its refusal for any it did not."""
    if outcome.kind == DELIVERED and not outcome.refused:
        sent.extend(copy.rcpts)
        return
    if outcome.kind == DELIVERED:
        sent.extend(r for r in copy.rcpts if r not in outcome.refused)
        rcpt, outcome = next(iter(outcome.refused.items()))
        text = f"{rcpt}: {outcome.message}"
    else:
        text = outcome.message
    reply = replies.bridge_upstream_refused(outcome.code, outcome.status, text, sent)
    raise (TemporaryFailure if reply.temporary else PolicyRefusal)(reply=reply, detail=outcome.describe())


def _credentials(username: str, password: str) -> Callable[[str, bytes], bool]:
    """The local credentials' check, in constant time (AuthGuard runs it in its thread pool)."""
    want_user, want_password = username.encode(), password.encode()

    def check(user: str, offered: bytes) -> bool:
        same_user = hmac.compare_digest(user.encode("utf-8", "replace"), want_user)
        return hmac.compare_digest(offered, want_password) and same_user
    return check
