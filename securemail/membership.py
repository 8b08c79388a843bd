"""This gateway's own federation entries: what its operator gives the authority to be listed.

``securemail federation entry`` prints them; the authority adds them to its draft
(``federation add --entry``), where ``federation.parse_member`` checks them again.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .config import GatewayConfig
from .crypto.keys import Key
from .crypto.tlspin import spki_sha256
from .errors import ConfigError
from .federation import parse_member
from .net import join_hostport


def tls_pin_of_cert(pem_or_der: bytes | str) -> str:
    """SHA-256 of the (first) certificate's SubjectPublicKeyInfo DER, lower-case hex (crypto.tlspin)."""
    data = pem_or_der.encode() if isinstance(pem_or_der, str) else pem_or_der
    pin = spki_sha256(data[max(data.find(b"-----BEGIN"), 0):])  # PEM from its BEGIN line, or DER
    if pin is None:
        raise ConfigError("not an X.509 certificate (PEM or DER)")
    return pin


def dkim_public_txt(private_pem: bytes) -> str:
    """The DNS TXT value of a DKIM private key: Ed25519 raw key, or RSA SubjectPublicKeyInfo."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("DKIM private key unreadable (unencrypted PEM expected)") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        k, enc, fmt = "ed25519", serialization.Encoding.Raw, serialization.PublicFormat.Raw
    elif isinstance(key, rsa.RSAPrivateKey):
        k, enc, fmt = "rsa", serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    else:
        raise ConfigError("DKIM key must be Ed25519 or RSA")
    return f"v=DKIM1; k={k}; p={base64.b64encode(key.public_key().public_bytes(enc, fmt)).decode()}"


def own_entries(config: GatewayConfig, certificate: Callable[[str], Key]) -> list[dict]:
    """This gateway's entries, one per served domain, checked as the authority will check them.

    ``certificate(fingerprint)``: a domain's OpenPGP key (``KeyStore.get``)."""
    relay = config.listener("relay")
    if relay is None:
        raise ConfigError("no [listeners.relay]: member gateways reach this one through it")
    host = config.hostname if relay.host in ("", "0.0.0.0", "::") else relay.host  # not a wildcard
    wkd = config.listener("wkd")
    wkd_host = (config.hostname if wkd.host in ("", "0.0.0.0", "::") else wkd.host) if wkd else None
    entries = []
    try:
        pin = tls_pin_of_cert(config.tls_cert.read_bytes())
        for domain in config.domains:
            dkim = [{"selector": d.selector, "public_key": dkim_public_txt(d.private_key.read_bytes())}
                    for d in config.dkim_keys if d.domain == domain]
            if domain not in config.openpgp_keys or not dkim:
                raise ConfigError(f"{domain} needs a key in [keys.openpgp] and a [[keys.dkim]] entry")
            entries.append({"domain": domain, "gateway": join_hostport(host, relay.port), "tls_pin": pin,
                            "openpgp_key": certificate(config.openpgp_keys[domain]).public()
                            .armored().decode("ascii"), "dkim": dkim})
            if wkd is not None:
                entries[-1]["wkd"] = join_hostport(wkd_host, wkd.port)
            parse_member(entries[-1])
    except OSError as e:
        raise ConfigError(f"cannot read {e.filename}: {e.strerror}") from None
    return entries
