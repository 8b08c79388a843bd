"""gateway check: the home's secret files (owner only) and its TLS certificate (dates, name, key).

Secret material is judged by its mode and by its public half, never shown: the TLS key is read
only to compare its public key with the certificate's.
"""

from __future__ import annotations

import math
import os
import stat
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..config import GatewayConfig
from ..rotation import load_rotation
from ..logs import KEY_FILE
from .result import Check, command, passed, problem, shown

EXPIRY_WARNING_DAYS = 14   # a certificate closer than this to its end is a problem already
GROUP_OTHERS = 0o077


def secret_files(config: GatewayConfig, database_file: Path | None) -> list[tuple[Path, bool, str]]:
    """The home's files that hold secrets: each with whether it must exist and what it holds. A
    missing database or TLS key is the "database" and "tls key" checks' to report; the passwords
    file comes with the first ``gateway user add``."""
    files = [(config.home / "securemail.toml", True, "database.url, which may carry a password")]
    if database_file is not None:
        files += [(Path(f"{database_file}{end}"), False, "the domains' OpenPGP secret keys")
                  for end in ("", "-wal", "-shm")]
    files.append((config.tls_key, False, "the TLS private key"))
    if (nxt := load_rotation(config).tls_next) is not None:
        files.append((nxt[1], True, "the next TLS private key (gateway rotate tls)"))
    files += [(d.private_key, True, "a DKIM private key") for d in config.dkim_keys]
    files.append((config.passwords_file, False, "the submission password hashes"))
    files.append((config.home / KEY_FILE, False, "the key that hashes addresses in the logs"))
    return files


def permission_checks(home: Path, files: list[tuple[Path, bool, str]]) -> list[Check]:
    """The home directory (0700) and each secret file (0600): nothing for the group or others."""
    out = [_mode("permissions home", home, "the gateway's secrets", directory=True)]
    seen = set()
    for path, required, holds in files:
        if path in seen:  # one key file named twice
            continue
        seen.add(path)
        name = f"permissions {shown(path, home)}"
        if not path.exists():
            if required:
                out.append(problem(name, f"missing ({holds})", "restore it from a backup, or point the config "
                                   f"at it (it was written by {command(home, 'gateway init')})"))
            continue
        out.append(_mode(name, path, holds, directory=False))
    return out


def _mode(name: str, path: Path, holds: str, *, directory: bool) -> Check:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        return problem(name, f"cannot read its mode: {e.strerror}", f"check {path}")
    if not mode & GROUP_OTHERS:
        return passed(name, f"{mode:04o}")
    open_to = " and ".join(who for bits, who in ((0o070, "group"), (0o007, "others")) if mode & bits)
    return problem(name, f"mode {mode:04o}: open to {open_to} (it holds {holds})",
                   f"chmod {'700' if directory else '600'} {path}")


# --- the TLS certificate ---------------------------------------------------------------------
def tls_checks(cert_path: Path, key_path: Path, hostname: str, now: float, home: Path,
               warn_days: int = EXPIRY_WARNING_DAYS) -> list[Check]:
    """The certificate's dates (with the days left), its names against ``gateway.hostname``, and
    that ``[tls] key`` is its key."""
    renew = (f"put a certificate for {hostname} at [tls] cert and its key at [tls] key; a new key "
             f"changes this gateway's tls_pin: send `{command(home, 'federation entry')}` to the "
             "federation authority")
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except OSError as e:
        return [problem("tls certificate", f"cannot read {shown(cert_path, home)}: {e.strerror}", renew)]
    except ValueError:
        return [problem("tls certificate", f"{shown(cert_path, home)} is not a PEM certificate", renew)]
    return [_dates(cert, now, warn_days, renew), _names(cert, hostname),
            _key(cert, key_path, shown(cert_path, home), shown(key_path, home))]


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _dates(cert: x509.Certificate, now: float, warn_days: int, renew: str) -> Check:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    left = math.floor((after.timestamp() - now) / 86400)
    if now < before.timestamp():
        return problem("tls certificate", f"not valid before {_day(before)}",
                       "check this host's clock, or " + renew)
    if now >= after.timestamp():
        return problem("tls certificate", f"expired on {_day(after)} ({-left} days ago)", renew)
    if left < warn_days:
        return problem("tls certificate", f"expires on {_day(after)}: {left} days left "
                       f"(under {warn_days})", renew)
    return passed("tls certificate", f"valid until {_day(after)}: {left} days left")


def _names(cert: x509.Certificate, hostname: str) -> Check:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:  # no subjectAltName: the common name, as older clients read it
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if any(covers(n, hostname) for n in names):
        return passed("tls name", f"the certificate names {hostname}")
    return problem("tls name", f"the certificate names {', '.join(names) or 'nothing'}, not {hostname} "
                   "(gateway.hostname)",
                   f"a certificate whose subjectAltName names {hostname}, or set gateway.hostname to a name "
                   "it has")


def covers(name: str, hostname: str) -> bool:
    """Whether a certificate name covers ``hostname``: equal (case aside), or a wildcard ``*.rest``
    for one more label (RFC 6125: the wildcard is the whole left-most label)."""
    name, host = name.lower().rstrip("."), hostname.lower().rstrip(".")
    if name == host:
        return True
    first, _, rest = host.partition(".")
    return name.startswith("*.") and bool(first) and "." in name[2:] and name[2:] == rest


def _key(cert: x509.Certificate, key_path: Path, cert_name: str, key_name: str) -> Check:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        return problem("tls key", f"cannot read {key_name}: {e.strerror}",
                       "put the certificate's private key (unencrypted PEM, mode 0600) at [tls] key")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return problem("tls key", f"{key_name} is not an unencrypted PEM private key",
                       "put the certificate's private key (unencrypted PEM, mode 0600) at [tls] key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return problem("tls key", f"{key_name} is not the key of {cert_name}",
                       "put the certificate's own key at [tls] key (or this key's certificate at [tls] cert)")
    return passed("tls key", f"{key_name} is the key of {cert_name}")
