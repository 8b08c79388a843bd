"""bridge init: the bridge's config beside the person's keys, local credentials and certificate.

The local password is 24 random bytes (192 bits) in URL-safe base64, in a file of mode 0600; the
local certificate is self-signed for ``localhost``, 127.0.0.1 and ::1 (the key 0600), valid 825
days, marked for TLS servers: mail clients are told to trust that one file
(``bridge credentials``). The upstream password is copied into the home (0600), so that
``bridge serve`` needs no file of the caller's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from ..crypto.tls import self_signed_cert
from ..errors import UsageError
from ..home import write_atomic
from ..net import join_hostport, split_hostport
from .settings import CONFIG, DEFAULT_CACHE, BridgeSettings

PASSWORD_BYTES = 24  # 192 bits


@dataclass
class BridgeInit:
    imap: str
    smtp: str
    username: str
    password: str                       # the upstream password (read from --password-file)
    cafile: str | None = None
    imap_listen: str = "127.0.0.1:1143"
    smtp_listen: str = "127.0.0.1:1025"


def _quoted(value: str) -> str:
    if any(c in value for c in '"\\\r\n'):
        raise UsageError(f"{value!r} cannot go into the bridge's config")
    return f'"{value}"'


def config_text(opts: BridgeInit, address: str) -> str:
    """``bridge.toml``: documented, no secret in it."""
    cafile = f"cafile = {_quoted(str(Path(opts.cafile).resolve()))}" if opts.cafile else \
        '# cafile = "/path/to/ca.pem"        # the upstream servers\' CA; default: the system\'s'
    return f"""\
# The securemail bridge (securemail bridge init): IMAP and SMTP on this machine for mail
# clients without OpenPGP. Secrets are in bridge/ (mode 0600), never here.

[upstream]                               # the ministry's servers; TLS always (993/465: implicit, else STARTTLS)
imap = {_quoted(opts.imap)}
smtp = {_quoted(opts.smtp)}
username = {_quoted(opts.username)}
{cafile}

[local]                                  # what mail clients connect to (bridge credentials)
imap = {_quoted(opts.imap_listen)}
smtp = {_quoted(opts.smtp_listen)}
username = {_quoted(address)}

[cache]
max_bytes = {DEFAULT_CACHE}                   # decrypted messages kept in memory, never on disk
"""


def init_bridge(home: Path, opts: BridgeInit, has_secret_key) -> BridgeSettings:
    """Write the bridge's config, credentials and certificate into ``home``; refuse to overwrite.
    ``has_secret_key(address)``: the home holds a usable secret key for that address."""
    home = Path(home)
    if (home / CONFIG).exists():
        raise UsageError(f"{home / CONFIG} exists already; edit it, or use another --home")
    for flag, value in (("--imap", opts.imap), ("--smtp", opts.smtp), ("--imap-listen", opts.imap_listen),
                        ("--smtp-listen", opts.smtp_listen)):
        hostport = split_hostport(value)
        if hostport is None or hostport[1] == 0:
            raise UsageError(f"{flag} must be HOST:PORT, not {value!r}")
    if opts.cafile and not Path(opts.cafile).is_file():
        raise UsageError(f"--cafile {opts.cafile}: no such file")
    address = opts.username.strip().lower()
    if "@" not in address:
        raise UsageError(f"--username must be your address (the identity mail is signed with), not {address!r}")
    if not has_secret_key(address):
        raise UsageError(f"no secret key for {address} in this home: generate or import it first "
                         "(securemail keys generate / keys import)")
    if not opts.password:
        raise UsageError("the upstream password file is empty")
    settings_dir = home / "bridge"
    settings_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(settings_dir / "upstream-password", opts.password.encode() + b"\n", 0o600)
    write_atomic(settings_dir / "local-password", secrets.token_urlsafe(PASSWORD_BYTES).encode() + b"\n", 0o600)
    self_signed_cert("localhost", settings_dir / "cert.pem", settings_dir / "key.pem",
                     ips=("127.0.0.1", "::1"), server_only=True)
    write_atomic(home / CONFIG, config_text(opts, address).encode(), 0o600)
    return BridgeSettings.load(home)


def credentials(settings: BridgeSettings) -> dict:
    """What a mail client needs (``bridge credentials``)."""
    imap_host, imap_port = settings.imap_listen
    smtp_host, smtp_port = settings.smtp_listen
    return {"imap": {"host": imap_host, "port": imap_port, "security": "STARTTLS"},
            "smtp": {"host": smtp_host, "port": smtp_port, "security": "STARTTLS"},
            "imap_address": join_hostport(imap_host, imap_port), "smtp_address": join_hostport(smtp_host, smtp_port),
            "username": settings.local_username,
            "password": settings.read_secret(settings.local_password_file),
            "certificate": str(settings.cert)}
