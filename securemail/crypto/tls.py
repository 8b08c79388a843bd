"""The gateway's server-side TLS context (every listener), from its certificate and key."""

from __future__ import annotations

import ssl

from ..errors import TemporaryFailure


def server_tls_context(config) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (OSError, ssl.SSLError) as e:
        why = "not a valid certificate and key" if isinstance(e, ssl.SSLError) else e.strerror or str(e)
        raise TemporaryFailure(f"TLS certificate unavailable ({config.tls_cert.name}, "
                               f"{config.tls_key.name}): {why}", detail=str(e)) from None
    return ctx
