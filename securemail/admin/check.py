"""securemail gateway check: a preflight of a gateway home, run before ``serve`` and after every change.

``preflight(home)`` returns one ``Check`` (result.py) per thing the admin must get right, in this
order: the config parses; the secret files are the owner's only; the TLS certificate (dates and days
left, name, key); the listeners can bind; the database answers, with the schema of this version;
the installed federation manifest (signature, serial, age) lists this gateway as it is; the office
MTA (``relay_to``) and the LMTP server answer. Each check is a function of what it is given (the
config, the files, the clock, a probe) in check_files.py, check_services.py, check_database.py and
check_federation.py; nothing here prints, repairs or creates anything, and no detail holds a secret.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..audit import AuditLog
from ..config import GatewayConfig, read_toml
from ..errors import ConfigError, UsageError
from ..home import Home
from ..keys.store import KeyStore
from ..rotation import load_rotation
from .check_database import open_database, schema_check, sqlite_file
from .check_federation import federation_checks
from .check_files import permission_checks, secret_files, tls_checks
from .check_services import PROBE_TIMEOUT, delivery_checks, listener_checks
from .result import Check, passed, problem

__all__ = ["Check", "gateway_home", "preflight"]


def gateway_home(path: Path) -> Home:
    """``path`` as a gateway home; UsageError (exit 2) when it is none: no such directory, no
    ``securemail.toml``, or one without ``[gateway]`` (a person's or the authority's home). A config
    that does not parse is a gateway home whose "config" check fails."""
    home = Home(Path(path))
    if not home.path.is_dir():
        raise UsageError(f"{home.path} is not a gateway home: no such directory")
    if not home.config_file.is_file():
        raise UsageError(f"{home.path} is not a gateway home: it has no securemail.toml "
                         "(make one with 'securemail gateway init')")
    try:
        data = read_toml(home.config_file)
    except ConfigError:
        return home
    if "gateway" not in data:
        raise UsageError(f"{home.path} is not a gateway home: its securemail.toml has no [gateway] "
                         "(a person's home, or the federation authority's)")
    return home


def preflight(home: Home, *, now: Callable[[], float] = time.time,
              timeout: float = PROBE_TIMEOUT) -> list[Check]:
    """Every check of the gateway ``home``; ``timeout`` bounds each network operation (seconds)."""
    try:
        config = GatewayConfig.load(home)
        load_rotation(config)  # [tls] next_cert and next_key, [keys.openpgp_next], keys.switch_after
    except ConfigError as e:  # nothing else can be found without the config
        return [problem("config", e.message, f"edit {home.config_file} (every setting is described in the "
                        'README, "Gateway configuration"), then check again')]
    out = [passed("config", f"{home.config_file.name} is valid: {', '.join(config.domains)} "
                  f"as {config.hostname}")]
    out += permission_checks(home.path, secret_files(config, sqlite_file(config.database_url)))
    out += tls_checks(config.tls_cert, config.tls_key, config.hostname, now(), home.path)
    out += listener_checks(config.listeners)
    database, engine = open_database(config.database_url, home.path, timeout)
    out.append(database)
    try:
        if engine is not None:
            out.append(schema_check(engine, home.path))
        keys, audit = (KeyStore(engine), AuditLog(engine)) if engine is not None else (None, None)
        out += federation_checks(config, keys, audit, now())
    finally:
        if engine is not None:
            engine.dispose()
    out += delivery_checks(config, timeout)
    return out
