"""The gateway's server-side TLS context (every listener), from its certificate and key.

During a certificate rotation (rotation.py) a listener shows the certificate ``pair()`` names at
each handshake: the context it was made with picks, in OpenSSL's servername callback (called for
every ClientHello, with or without SNI), the context of that certificate, made once per pair by the
same ``prepare`` (the relay's asks for client certificates).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from ..errors import TemporaryFailure

log = logging.getLogger(__name__)


def server_tls_context(config) -> ssl.SSLContext:
    return load_server_context(config.tls_cert, config.tls_key)


def load_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        why = "not a valid certificate and key" if isinstance(e, ssl.SSLError) else e.strerror or str(e)
        raise TemporaryFailure(f"TLS certificate unavailable ({Path(cert).name}, "
                               f"{Path(key).name}): {why}", detail=str(e)) from None
    return ctx


def switching_context(pair: Callable[[], tuple[Path, Path]],
                      prepare: Callable[[ssl.SSLContext], ssl.SSLContext] = lambda ctx: ctx) -> ssl.SSLContext:
    """A listener's context that shows, at each handshake, the certificate ``pair()`` names now."""
    contexts: dict[tuple[Path, Path], ssl.SSLContext] = {}

    def context_of(p: tuple[Path, Path]) -> ssl.SSLContext:
        if p not in contexts:
            contexts[p] = prepare(load_server_context(*p))
        return contexts[p]

    def pick(sslobj, server_name, ctx) -> None:
        try:
            chosen = context_of(pair())
        except Exception:  # noqa: BLE001 - an unreadable next certificate: keep showing this one
            log.exception("TLS: the certificate to show cannot be loaded; showing the one in use")
            return None
        if chosen is not sslobj.context:
            sslobj.context = chosen
        return None
    first = context_of(pair())
    first.sni_callback = pick
    return first
