"""Client certificates on the relay's STARTTLS: asked of every client, any accepted, the pin decides.

Member gateways show their own certificate when they deliver (delivery/smtp.py);
mail from a member domain is accepted only over a session whose certificate's
SPKI pin is that domain's ``tls_pin`` in the manifest (policy rule
``member_cert``). Offices and anonymous senders have no certificate: one is
requested, never required.

Federation certificates are self-signed and pinned, not chained, so the
handshake must accept a certificate whatever its issuer, expiry or name.
Python's ``ssl`` has no verify callback, and OpenSSL ends the handshake on a
certificate it cannot chain (``CERT_OPTIONAL`` included). ``request_client_certificates``
therefore installs, through ctypes, a verify callback that accepts every
certificate on the context's ``SSL_CTX`` (CPython keeps a context's callback when
``verify_mode`` is set again and copies it to each connection). The TLS
handshake still proves that the client holds the private key of the
certificate it shows (CertificateVerify); which key that may be is the pin's
business, checked by policy on ``Envelope.tls_peer_pin``.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl

from securemail.errors import ConfigError

_SSL_VERIFY_PEER = 0x01
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store_ctx: int) -> int:
    return 1  # any certificate: the pin, not a chain, authenticates a member gateway


_ACCEPT_ANY = _VerifyCallback(_accept_any)  # a constant: it must outlive every context using it


def _libssl() -> ctypes.CDLL:
    lib = ctypes.CDLL(_ssl.__file__)  # its symbol lookup reaches the libssl _ssl is linked with
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    return lib


def _ssl_ctx(ctx: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` of a context: the first member after the object header (CPython's
    PySSLContext, unchanged since Python 3.0)."""
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value or 0


def request_client_certificates(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """``ctx`` (a server context, changed in place) asks every client for a certificate and
    accepts any, or none; the peer's certificate is then ``getpeercert(binary_form=True)``."""
    if ctx.verify_mode == ssl.CERT_REQUIRED:
        raise ConfigError("a server context that requires client certificates cannot take any")
    lib, ptr = _libssl(), _ssl_ctx(ctx)
    ctx.verify_mode = ssl.CERT_NONE
    none = lib.SSL_CTX_get_verify_mode(ptr) if ptr else -1
    ctx.verify_mode = ssl.CERT_OPTIONAL
    if none != 0 or lib.SSL_CTX_get_verify_mode(ptr) != _SSL_VERIFY_PEER:  # not the SSL_CTX: touch nothing
        raise ConfigError("cannot set up TLS client certificates with this Python's ssl module")
    lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return ctx


__all__ = ["request_client_certificates"]
