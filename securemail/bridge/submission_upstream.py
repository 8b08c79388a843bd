"""The bridge's upstream: the ministry's submission service, over verified STARTTLS and AUTH only.

The upstream is the gateway's submission listener or the office Postfix. A
session is refused before any credential or message is sent when the server
offers no STARTTLS or its certificate is not trusted (the system CAs, or
``cafile``: a gateway's self-signed certificate), and the certificate must name
the host it was reached at. Each copy is one MAIL/RCPT/DATA transaction of the
delivery stage's client (``delivery.smtp.send_mail``), several copies on one
session. Failures become errors carrying a named reply of smtp/replies.py.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator

import aiosmtplib

from securemail.delivery.outcome import Outcome
from securemail.delivery.smtp import send_mail
from securemail.errors import TemporaryFailure
from securemail.net import join_hostport, server_and_context
from securemail.smtp import replies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """Where and as whom the bridge submits: HOST, PORT, the person's submission account, and the
    certificate (or CA) to trust (None: the system CAs); ``timeout`` bounds each network step."""
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    cafile: str | None = None
    timeout: float = 60.0
    helo: str = "localhost"

    def __str__(self) -> str:
        return join_hostport(self.host, self.port)

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked); UsageError for an unreadable ``cafile``."""
        return server_and_context(str(self), self.cafile)[2]


class Session:
    """One upstream session, logged in over TLS; ``send`` is one transaction."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self._client = client

    async def send(self, mail_from: str, rcpts: list[str], body: bytes) -> Outcome:
        """The outcome of one transaction; a network failure on the way is a TemporaryFailure."""
        try:
            return await send_mail(self._client, mail_from, rcpts, body)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise TemporaryFailure(reply=replies.BRIDGE_UPSTREAM_UNREACHABLE, detail=repr(e)) from None


@contextlib.asynccontextmanager
async def session(up: Upstream) -> AsyncIterator[Session]:
    """Connect, EHLO, STARTTLS (verified), EHLO, AUTH; QUIT at the end."""
    context = up.tls_context()
    client = aiosmtplib.SMTP(hostname=up.host, port=up.port, timeout=up.timeout, local_hostname=up.helo,
                             use_tls=False, start_tls=False)
    try:
        await _open(client, up, context)
        yield Session(client)
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
    finally:
        client.close()


async def _open(client: aiosmtplib.SMTP, up: Upstream, context: ssl.SSLContext) -> None:
    try:
        await client.connect()
        await client.ehlo()
        if not client.supports_extension("starttls"):
            raise _refused(up, replies.BRIDGE_UPSTREAM_INSECURE, "no STARTTLS offered")
        await client.starttls(tls_context=context, server_hostname=up.host)
        await client.ehlo()
    except ssl.SSLError as e:
        raise _refused(up, replies.BRIDGE_UPSTREAM_INSECURE, f"TLS: {e}") from None
    except (aiosmtplib.SMTPException, OSError) as e:
        if isinstance(e.__cause__, ssl.SSLError) or isinstance(e.__context__, ssl.SSLError):
            raise _refused(up, replies.BRIDGE_UPSTREAM_INSECURE, f"TLS: {e}") from None
        raise _refused(up, replies.BRIDGE_UPSTREAM_UNREACHABLE, repr(e)) from None
    try:
        await client.login(up.username, up.password)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as e:
        raise _refused(up, replies.BRIDGE_UPSTREAM_UNREACHABLE, repr(e)) from None
    except aiosmtplib.SMTPException as e:  # refused, or no AUTH offered at all
        raise _refused(up, replies.BRIDGE_UPSTREAM_AUTH, repr(e)) from None


def _refused(up: Upstream, reply, detail: str) -> TemporaryFailure:
    log.warning("upstream %s: %s", up, detail)
    return TemporaryFailure(reply=reply, detail=detail)
