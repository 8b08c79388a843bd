"""The bridge's settings: ``bridge.toml`` in the person's home, its secrets and certificate in ``bridge/``.

``bridge init`` writes them (bridge/setup.py); ``bridge serve`` and ``bridge credentials`` read
them here, once. Secrets (the upstream password, the local password, the local TLS key) are
files of their own, mode 0600, never in the TOML.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import parse_hostport, read_toml
from ..errors import ConfigError, UsageError

CONFIG = "bridge.toml"
DIRECTORY = "bridge"
DEFAULT_CACHE = 32 << 20        # bytes of decrypted messages kept in memory
DEFAULT_READERS = min(4, os.cpu_count() or 1)   # reader processes (readers.py); 0: a thread
IMPLICIT_TLS = {"imap": 993, "smtp": 465}


@dataclass(frozen=True)
class BridgeSettings:
    home: Path
    address: str                     # the identity: the owner's address, their key's
    imap: tuple[str, int]            # upstream IMAP (the ministry's Dovecot)
    smtp: tuple[str, int]            # upstream submission (the gateway's, or the office Postfix)
    username: str                    # upstream login
    cafile: Path | None              # the upstream's CA (None: the system's)
    imap_listen: tuple[str, int]
    smtp_listen: tuple[str, int]
    cache_bytes: int = DEFAULT_CACHE
    readers: int = DEFAULT_READERS

    @property
    def directory(self) -> Path:
        return self.home / DIRECTORY

    @property
    def upstream_password_file(self) -> Path:
        return self.directory / "upstream-password"

    @property
    def local_password_file(self) -> Path:
        return self.directory / "local-password"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def local_username(self) -> str:
        return self.address

    def implicit_tls(self, service: str) -> bool:
        """Upstream ``service`` ("imap", "smtp") on its implicit-TLS port (993, 465); else STARTTLS."""
        return (self.imap if service == "imap" else self.smtp)[1] == IMPLICIT_TLS[service]

    def read_secret(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8").strip("\r\n")
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror} (securemail bridge init)") from None

    @classmethod
    def load(cls, home: Path) -> "BridgeSettings":
        path = Path(home) / CONFIG
        if not path.exists():
            raise UsageError(f"no bridge in {home}: run `securemail bridge init` first")
        data = read_toml(path)
        up, local = data.get("upstream", {}), data.get("local", {})
        try:
            cafile = up.get("cafile")
            return cls(home=Path(home), address=str(local["username"]).lower(),
                       imap=parse_hostport(up["imap"], "upstream.imap"),
                       smtp=parse_hostport(up["smtp"], "upstream.smtp"), username=str(up["username"]),
                       cafile=Path(cafile) if cafile else None,
                       imap_listen=parse_hostport(local["imap"], "local.imap"),
                       smtp_listen=parse_hostport(local["smtp"], "local.smtp"),
                       cache_bytes=int(data.get("cache", {}).get("max_bytes", DEFAULT_CACHE)),
                       readers=max(0, int(data.get("readers", {}).get("count", DEFAULT_READERS))))
        except KeyError as e:
            raise ConfigError(f"{path}: {e.args[0]} is missing") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {e}") from None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listeners(settings: BridgeSettings, allow_remote: bool) -> None:
    """Both local listeners on loopback, unless ``--allow-remote``: else a clear UsageError."""
    for name, (host, port) in (("IMAP", settings.imap_listen), ("SMTP", settings.smtp_listen)):
        if not allow_remote and not is_loopback(host):
            raise UsageError(f"the bridge's {name} listener {host}:{port} is not a loopback address: "
                             "mail clients on other machines would reach your decrypted mail; "
                             "use 127.0.0.1, or give --allow-remote if that is what you want")
