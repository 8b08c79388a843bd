"""TLS material: the gateway's server-side context (every listener) and self-signed certificates
(a gateway's at init, the bridge's local one)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import TemporaryFailure
from ..home import write_atomic


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
