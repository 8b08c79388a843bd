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
from .crypto.keys import Key, load_key
from .crypto.tlspin import spki_sha256
from .errors import ConfigError
from .federation import Manifest, Member, parse_member
from .net import join_hostport
from .rotation import RotationConfig, announce, announce_dkim, load_rotation


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


def own_entries(config: GatewayConfig, certificate: Callable[[str], Key],
                manifest: Manifest | None = None) -> list[dict]:
    """This gateway's entries, one per served domain, checked as the authority will check them.

    ``certificate(fingerprint)``: a domain's OpenPGP key (``KeyStore.get``). During a rotation
    (rotation.py) the next key is listed, with the current one ``retiring``, until ``manifest`` (the
    installed one) lists the next one; then the next one alone."""
    relay = config.listener("relay")
    if relay is None:
        raise ConfigError("no [listeners.relay]: member gateways reach this one through it")
    host = config.hostname if relay.host in ("", "0.0.0.0", "::") else relay.host  # not a wildcard
    wkd = config.listener("wkd")
    wkd_host = (config.hostname if wkd.host in ("", "0.0.0.0", "::") else wkd.host) if wkd else None
    rot = load_rotation(config)
    entries = []
    try:
        pins = (tls_pin_of_cert(config.tls_cert.read_bytes()),
                tls_pin_of_cert(rot.tls_next[0].read_bytes()) if rot.tls_next else None)
        for domain in config.domains:
            listed = manifest.member(domain) if manifest is not None else None
            entries.append({"domain": domain, "gateway": join_hostport(host, relay.port),
                            **_keys(config, rot, domain, listed, pins, certificate)})
            if wkd is not None:
                entries[-1]["wkd"] = join_hostport(wkd_host, wkd.port)
            parse_member(entries[-1])
    except OSError as e:
        raise ConfigError(f"cannot read {e.filename}: {e.strerror}") from None
    return entries


def _keys(config: GatewayConfig, rot: RotationConfig, domain: str, listed: Member | None,
          pins: tuple[str, str | None], certificate: Callable[[str], Key]) -> dict:
    """The entry's tls_pin, openpgp_key, dkim and (during a rotation) retiring fields."""
    if domain not in config.openpgp_keys:
        raise ConfigError(f"{domain} needs a key in [keys.openpgp] and a [[keys.dkim]] entry")
    pin, retiring_pin = announce(*pins, listed.tls_pins if listed else ())
    fprs = [load_key(k).fingerprint for k in (listed.openpgp_key, listed.retiring_key) if k] if listed else []
    fpr, retiring_fpr = announce(config.openpgp_keys[domain], rot.openpgp_next.get(domain), fprs)
    dkim = announce_dkim(*rot.dkim(config, domain), {sel for sel, _ in listed.dkim} if listed else (),
                         lambda k: k.selector)
    if not dkim:
        raise ConfigError(f"{domain} needs a key in [keys.openpgp] and a [[keys.dkim]] entry")
    armored = lambda f: certificate(f).public().armored().decode("ascii")  # noqa: E731
    retiring = {"tls_pin": retiring_pin, "openpgp_key": armored(retiring_fpr) if retiring_fpr else None}
    return {"tls_pin": pin, "openpgp_key": armored(fpr),
            "dkim": [{"selector": d.selector, "public_key": dkim_public_txt(d.private_key.read_bytes())}
                     for d in dkim],
            **({"retiring": {k: v for k, v in retiring.items() if v}} if any(retiring.values()) else {})}
