"""TLS material: the gateway's server-side context (every listener), self-signed certificates (a
gateway's at init, the bridge's local one), and the listener context that switches certificate.

During a certificate rotation (rotation.py) a listener shows the certificate ``pair()`` names at
each handshake: the context it was made with picks, in OpenSSL's servername callback (called for
every ClientHello, with or without SNI), the context of that certificate, made once per pair by the
same ``prepare`` (the relay's asks for client certificates).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import TemporaryFailure
from ..home import write_atomic

log = logging.getLogger(__name__)


def server_tls_context(config) -> ssl.SSLContext:
    return load_server_context(config.tls_cert, config.tls_key)


def load_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) from a certificate and its key, or TemporaryFailure."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        why = "not a valid certificate and key" if isinstance(e, ssl.SSLError) else e.strerror or str(e)
        raise TemporaryFailure(f"TLS certificate unavailable ({Path(cert).name}, "
                               f"{Path(key).name}): {why}", detail=str(e)) from None
    return ctx


def self_signed_cert(hostname: str, cert_path: Path, key_path: Path, days: int = 825, *,
                     names: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",),
                     server_only: bool = False) -> None:
    """A P-256 self-signed certificate for ``hostname`` (and ``names``, ``ips`` in its
    subjectAltName), valid ``days`` (825 at most: what Apple's clients accept); key 0600.
    ``server_only``: marked for TLS servers (a gateway's also serves as its client certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.timezone.utc)
    sans = [x509.DNSName(n) for n in (hostname, *names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName(sans), critical=False))
    if server_only:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    for path, data, mode in (
            (key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600),
            (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)):
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, mode)


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
