"""Next-hop session reuse: idle SMTP sessions kept per hop, so a busy member gets one TLS handshake, not one per message.

``SessionPool.deliver`` has the signature of ``smtp.deliver_smtp`` and is what
the gateway's workers use. A session is opened (STARTTLS and the pin check for
a member) when no idle one exists for the hop, and put back after a
transaction that left it in a clean state. If a reused session turns out to
be dead before any message data was sent, the transaction is retried once on
a fresh session; after that point it is settled as it ended, never resent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiosmtplib

from securemail.transform.hops import Hop
from securemail.delivery.outcome import Outcome
from securemail.delivery.smtp import (TlsClientCert, check_args, failure_outcome, new_client,
                                      open_session, send_mail, _log)

log = logging.getLogger(__name__)


class SessionPool:
    def __init__(self, *, idle_seconds: float = 30.0, max_idle_per_hop: int = 16,
                 clock=time.monotonic) -> None:
        self.idle_seconds, self.max_idle = idle_seconds, max_idle_per_hop
        self.clock = clock
        self._idle: dict[tuple, list[tuple[float, aiosmtplib.SMTP]]] = {}
        self.opened = 0   # sessions opened (for tests and the benchmark)

    async def deliver(self, hop: Hop, mail_from: str, rcpt: str | Sequence[str], body: bytes,
                      *, helo: str, timeout: float = 60.0,
                      tls_client_cert: TlsClientCert | None = None) -> Outcome:
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        bad = check_args(hop, mail_from, rcpts)
        if bad is not None:
            return bad
        key = (hop, tls_client_cert)  # a certificate rotated: new sessions show the new one
        client = self._take(key)
        if client is not None:
            progress: list[str] = []
            try:
                outcome = await send_mail(client, mail_from, rcpts, body, progress)
                self._give(key, client)
                _log(hop, rcpts, outcome)
                return outcome
            except Exception as err:  # noqa: BLE001 - a stale session: retry fresh if nothing was sent
                client.close()
                if progress:
                    outcome = failure_outcome(err, hop, client)
                    _log(hop, rcpts, outcome)
                    return outcome
                log.debug("reused session to %s was dead (%r); opening a new one", key, err)
        client = new_client(hop, helo, timeout)
        try:
            await open_session(client, hop, tls_client_cert)
            self.opened += 1
            outcome = await send_mail(client, mail_from, rcpts, body)
            self._give(key, client)
        except Exception as err:  # noqa: BLE001 - mapped by failure_outcome (re-raises bugs)
            client.close()
            outcome = failure_outcome(err, hop, client)
        _log(hop, rcpts, outcome)
        return outcome

    def _take(self, key: tuple) -> aiosmtplib.SMTP | None:
        now = self.clock()
        idle = self._idle.get(key, [])
        while idle:
            since, client = idle.pop()
            if now - since < self.idle_seconds and client.is_connected:
                return client
            client.close()
        return None

    def _give(self, key: tuple, client: aiosmtplib.SMTP) -> None:
        idle = self._idle.setdefault(key, [])
        if client.is_connected and len(idle) < self.max_idle:
            idle.append((self.clock(), client))
        else:
            client.close()

    async def close(self) -> None:
        """QUIT every idle session (on shutdown)."""
        sessions = [c for idle in self._idle.values() for _, c in idle]
        self._idle.clear()
        for client in sessions:
            try:
                await asyncio.wait_for(client.quit(), 5)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            client.close()
