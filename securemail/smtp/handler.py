"""SMTP handler: turns aiosmtpd callbacks into calls of a recipient decision and a store.

Thin on purpose: parse what aiosmtpd hands over, call ``decide_rcpt`` or
``accept_data``, answer with what they return (AUTH: smtp/auth.py).
Decisions live elsewhere and are tested without sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Union

from securemail.envelope import Envelope
from securemail.smtp import replies
from securemail.smtp.replies import Reply

log = logging.getLogger(__name__)

NULL_PATH = "<>"  # how aiosmtpd spells the null reverse-path


@dataclass(frozen=True)
class SessionInfo:
    """What a recipient decision may know about the session so far."""

    peer_ip: str
    peer_port: int
    helo: str
    tls: bool
    tls_peer_cert_der: bytes | None = field(repr=False)
    auth_user: str | None
    mail_from: str  # "" for the null reverse-path
    rcpt_tos: tuple[str, ...]  # recipients accepted so far


DecideRcpt = Callable[[SessionInfo, str], Union[Reply, None, Awaitable[Union[Reply, None]]]]
AcceptData = Callable[[Envelope], Union[Reply, Awaitable[Reply]]]
Authenticator = Callable[[str, bytes], bool]
"""``authenticator(username, password) -> bool``: blocking (scrypt), so authlimit.py's AuthGuard
calls it in a thread, with a failure budget; offered as LOGIN and PLAIN over TLS only (smtp/auth.py)."""


class GatewayHandler:
    """aiosmtpd handler: ``decide_rcpt`` says yes (None) or a reply; ``accept_data`` stores.

    Either callable may be sync or async. A SecureMailError they raise becomes
    its own reply; any other exception becomes 451 and is logged. An async
    ``accept_data`` is shielded: a client hanging up cannot cancel a commit
    half-way.
    """

    def __init__(self, decide_rcpt: DecideRcpt, accept_data: AcceptData, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._decide_rcpt = decide_rcpt
        self._accept_data = accept_data
        self._clock = clock

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any,
                          address: str, mail_options: list[str]) -> Reply:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.MAIL_OK

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> Reply:
        if address == NULL_PATH:
            return replies.BAD_RCPT_SYNTAX
        try:
            reply = await _resolve(self._decide_rcpt(session_info(session, envelope), address))
        except Exception as exc:  # noqa: BLE001 - every error becomes a reply
            return replies.for_exception(exc)
        if reply is not None:
            return replies.checked(reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> Reply:
        info = session_info(session, envelope)
        content = envelope.original_content
        message = Envelope(
            mail_from=info.mail_from, rcpt_tos=info.rcpt_tos,
            data=content if type(content) is bytes else bytes(content),  # bytes pass uncopied
            peer_ip=info.peer_ip,
            peer_port=info.peer_port, tls=info.tls,
            tls_peer_cert_der=info.tls_peer_cert_der, auth_user=info.auth_user,
            helo=info.helo, received_at=self._clock())
        try:
            result = self._accept_data(message)
            if inspect.isawaitable(result):
                result = await asyncio.shield(result)
        except Exception as exc:  # noqa: BLE001 - every error becomes a reply
            return replies.for_exception(exc)
        return replies.checked(result)


def session_info(session: Any, envelope: Any) -> SessionInfo:
    """Freeze aiosmtpd's mutable Session/Envelope into what decisions may read."""
    peer = session.peer if isinstance(session.peer, tuple) else ("", 0)
    mail_from = envelope.mail_from or ""
    return SessionInfo(
        peer_ip=str(peer[0]), peer_port=int(peer[1]),
        helo=session.host_name or "",
        tls=session.ssl is not None,
        tls_peer_cert_der=_peer_cert_der(session.ssl),
        auth_user=session.auth_data if session.authenticated else None,
        mail_from="" if mail_from == NULL_PATH else mail_from,
        rcpt_tos=tuple(envelope.rcpt_tos))


def _peer_cert_der(ssl_info: dict[str, Any] | None) -> bytes | None:
    ssl_object = (ssl_info or {}).get("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
