"""The TLS pin of a certificate: SHA-256 of its SubjectPublicKeyInfo, the one way pins are computed.

The federation pins keys, not chains: a member's ``tls_pin`` in the manifest
is this value of its gateway's certificate (self-signed certificates are
normal). The delivery client checks it on the server's certificate, the SMTP
server computes it for the client certificate a session showed, and
``membership.tls_pin_of_cert`` for this gateway's own entry. A renewed
certificate over the same key keeps its pin.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def spki_sha256(certificate: bytes) -> str | None:
    """The pin of a certificate (DER, or PEM starting with its BEGIN line), lower-case hex;
    None if it cannot be read."""
    if certificate.lstrip().startswith(b"-----BEGIN"):
        try:
            certificate = x509.load_pem_x509_certificate(certificate).public_bytes(Encoding.DER)
        except (ValueError, UnsupportedAlgorithm):
            return None
    return der_pin(certificate)


@functools.lru_cache(maxsize=64)  # a member's gateway shows the same certificate for every message
def der_pin(der: bytes) -> str | None:
    """The pin of a DER certificate, as a TLS peer presented it; never read as PEM (a DER
    certificate can carry any text, even another certificate's PEM, in its fields)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return hashlib.sha256(spki).hexdigest()


__all__ = ["der_pin", "spki_sha256"]
