"""SMTP AUTH for a session: aiosmtpd parses PLAIN and LOGIN, the server's AuthGuard decides.

aiosmtpd calls its authenticator synchronously, on the event loop; a scrypt
there stalls every session (8 guessers took NOOP from 0.1 ms to 400 ms). Here
aiosmtpd only hands the credentials over (``_authenticate``), and
``smtp_AUTH`` awaits ``AuthGuard.verify``, which checks them in a thread.
After ``session_failures`` failed attempts the next AUTH is answered 421 and
the connection closed, without a check.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from securemail.smtp import replies

log = logging.getLogger(__name__)


class AuthSession:
    """Mixin for the server's SMTP session; needs ``self._sessions.guard`` (an AuthGuard or None)."""

    _auth_failures = 0
    _offered: Any = None  # what the client sent, as aiosmtpd parsed it, until it is checked

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._offered = auth_data
        return AuthResult(success=False, handled=True)  # aiosmtpd answers nothing: smtp_AUTH does

    async def smtp_AUTH(self, arg: str) -> None:
        guard = self._sessions.guard
        if guard is not None and self._auth_failures >= guard.limits.session_failures:
            self.close_with(replies.AUTH_SESSION_FAILURES)
            return
        self._offered = None
        await super().smtp_AUTH(arg)  # preconditions (EHLO, TLS, once), the mechanism's exchange
        offered, self._offered = self._offered, None
        if offered is None:
            return
        if guard is None or not isinstance(offered, LoginPassword):
            await self.push(replies.AUTH_INVALID)
            return
        user = offered.login.decode("utf-8", "replace")
        peer = self.session.peer if isinstance(self.session.peer, tuple) else ("", 0)
        try:  # shielded: a client hanging up does not spare its failure from the budget
            outcome = await asyncio.shield(guard.verify(str(peer[0]), user, offered.password))
        except Exception as exc:  # noqa: BLE001 - every error becomes a reply
            await self.push(replies.for_exception(exc))
            return
        if outcome == "ok":
            self.session.authenticated = True
            self.session.auth_data = self.session.login_data = user
            await self.push(replies.AUTH_OK)
            return
        self._auth_failures += 1
        log.info("%r AUTH failed for %r (%s)", self.session.peer, user, outcome)
        await self.push(replies.AUTH_LOCKED if outcome == "locked" else replies.AUTH_INVALID)


def still_a_user(decide, known):
    """The RCPT decision, first refusing sessions authenticated as a user removed since (``known``:
    Users.known). A removed user's session keeps only the transaction whose recipients it already has."""
    def decide_rcpt(session, address: str):
        if session.auth_user and not known(session.auth_user):
            return replies.AUTH_REVOKED
        return decide(session, address)
    return decide_rcpt
