"""Client-side connection settings shared by the commands that talk to a gateway (SMTP, HTTPS)."""

from __future__ import annotations

import ssl

from .errors import UsageError


def server_and_context(server: str, cafile: str | None) -> tuple[str, int, ssl.SSLContext]:
    """HOST:PORT split, and a verifying TLS context (system CAs, or ``cafile``: a gateway's
    self-signed certificate, say)."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--server must be HOST:PORT, not {server!r}")
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load CA file {cafile}: {e}") from None
    return host, int(port), ctx
