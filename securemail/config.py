"""Typed settings loaded once from the home's TOML file; no module-level instance.

``CoreConfig`` is what the person-facing commands need (the database).
``GatewayConfig`` is everything ``securemail serve`` reads; every key is
documented in the README and in the file ``securemail gateway init`` writes.
Relative paths are relative to the home.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .config_ops import Anchoring, ManifestFetch, anchoring, manifest_fetch, parse_duration
from .errors import ConfigError
from .home import Home
from .logs import LogSettings
from .net import split_hostport, split_socket_address


def read_toml(path: Path) -> dict:
    """The parsed file, or {} when it does not exist; a clear ConfigError when it is invalid."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path.name}: {e.strerror}") from None


def _table(data: dict, name: str) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _get(table: dict, key: str, kind, default, where: str):
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be {getattr(kind, '__name__', kind)}")
    return value


def _positive(value, where: str):
    """``value`` if it is a finite number above zero (a limit, a delay, a count), else ConfigError."""
    if not 0 < value < float("inf"):  # also false for NaN
        raise ConfigError(f"{where} must be a positive number, not {value!r}")
    return value


def _processes(gw: dict) -> int:
    n = _get(gw, "processes", int, 1, "gateway")
    if not 1 <= n <= 64:
        raise ConfigError("gateway.processes must be between 1 and 64")
    return n


AUTO_CPU_WORKERS = 4  # beyond this the serve process's own core is the limit: use gateway.processes


def _cpu_workers(gw: dict) -> int | None:
    """[gateway] cpu_workers: crypto worker processes, 0 = threads; "auto" (default) is None here."""
    value = gw.get("cpu_workers", "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError('gateway.cpu_workers must be "auto" or a number from 0 to 64')
    return value


def _delivery_process(dl: dict) -> bool | None:
    """[delivery] process: deliver from a child process; "auto" (default) is None here."""
    value = dl.get("process", "auto")
    if value == "auto":
        return None
    if not isinstance(value, bool):
        raise ConfigError('delivery.process must be "auto", true or false')
    return value


def parse_hostport(text: str, where: str) -> tuple[str, int]:
    """``net.split_hostport``, or ConfigError naming the setting ``where``."""
    hostport = split_hostport(text)
    if hostport is None:
        raise ConfigError(f"{where} must be HOST:PORT, not {text!r}")
    return hostport


def _lmtp(dl: dict, local: str) -> tuple[str, int] | str | None:
    """delivery.lmtp, the office's LMTP server (needed when delivery.local = "lmtp")."""
    value = dl.get("lmtp")
    if value is None and local == "lmtp":
        raise ConfigError('delivery.lmtp (HOST:PORT or the absolute path of a unix socket) is needed '
                          'when delivery.local = "lmtp"')
    target = None if value is None or not isinstance(value, str) else split_socket_address(value)
    if value is not None and target is None:
        raise ConfigError("delivery.lmtp must be HOST:PORT or the absolute path of a unix socket "
                          f"(at most 107 bytes), not {value!r}")
    return target


METRICS_LISTEN = "127.0.0.1:9464"  # [listeners.metrics] when the config has none; "none": no listener


def _listeners(table: dict) -> tuple["Listener", ...]:
    """[listeners.relay|submission|wkd|metrics]: where each listens, whom it trusts, STARTTLS and AUTH."""
    listeners = []
    for name, t in {**table, **({} if "metrics" in table else {"metrics": {"listen": METRICS_LISTEN}})}.items():
        if name not in ("relay", "submission", "wkd", "metrics") or not isinstance(t, dict):
            raise ConfigError(f"unknown listener [listeners.{name}] (relay, submission, wkd or metrics)")
        if name == "metrics" and t.get("listen") == "none":
            continue
        host, port = parse_hostport(_get(t, "listen", str, "", f"listeners.{name}"), f"listeners.{name}.listen")
        try:
            nets = tuple(ipaddress.ip_network(n, strict=False) for n in t.get("trusted_networks", []))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"listeners.{name}.trusted_networks: {e}") from None
        sub = name == "submission"
        required = _get(t, "auth_required", bool, sub, f"listeners.{name}")
        auth = _get(t, "auth", bool, sub or required, f"listeners.{name}")
        if required and not auth:
            raise ConfigError(f"listeners.{name}: auth_required = true needs auth = true")
        listeners.append(Listener(name, host, port, nets,
                                  _get(t, "require_starttls", bool, sub, f"listeners.{name}"),
                                  required, auth=auth))
    return tuple(listeners)


def _dkim_keys(keys: dict, path) -> tuple["DkimKeyConfig", ...]:
    """[[keys.dkim]]: one table per signing key (domain, selector, algorithm, private_key)."""
    dkim = []
    if not isinstance(keys.get("dkim", []), list):
        raise ConfigError("keys.dkim must be a list of tables")
    for i, d in enumerate(keys.get("dkim", [])):
        if not isinstance(d, dict):
            raise ConfigError("keys.dkim must be a list of tables")
        w = f"keys.dkim[{i}]"
        dkim.append(DkimKeyConfig(_get(d, "domain", str, "", w).lower(), _get(d, "selector", str, "", w),
                                  _get(d, "algorithm", str, "ed25519", w),
                                  path(_get(d, "private_key", str, "", w))))
    return tuple(dkim)


def _refresh(data: dict) -> float:
    """``[directory] refresh_seconds``: how long a key found in the federation's directory is used
    before it is fetched again (revocations and changes are noticed then)."""
    value = _get(_table(data, "directory"), "refresh_seconds", float, 86400.0, "directory")
    if value <= 0:
        raise ConfigError("directory.refresh_seconds must be positive")
    return value


@dataclass(frozen=True)
class CoreConfig:
    database_url: str
    directory_refresh: float = 86400.0
    federation_authority: str | None = None
    auto_migrate: bool = False  # database.auto_migrate; true by default in a person's home (no [gateway])

    @classmethod
    def load(cls, home: Home) -> "CoreConfig":
        data = read_toml(home.config_file)
        db = _table(data, "database")
        return cls(database_url=_get(db, "url", str, home.default_database_url, "database"),
                   auto_migrate=_get(db, "auto_migrate", bool, "gateway" not in data, "database"),
                   directory_refresh=_refresh(data),
                   federation_authority=_table(data, "federation").get("authority"))


@dataclass(frozen=True)
class Listener:
    name: str                 # "relay" | "submission" (SMTP) | "wkd" (HTTPS key directory) | "metrics"
    host: str
    port: int
    trusted_networks: tuple[ipaddress._BaseNetwork, ...] = ()
    require_starttls: bool = False
    auth_required: bool = False
    auth: bool = False        # AUTH offered (over TLS): default on for submission, off for relay

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_networks)


@dataclass(frozen=True)
class DkimKeyConfig:
    domain: str
    selector: str
    algorithm: str            # "ed25519" | "rsa2048"
    private_key: Path


@dataclass(frozen=True)
class Limits:
    """``[limits]``: what one SMTP server and one message may take; the SMTP server reads these
    (smtp/server.py), each answered with its own reply."""
    message_size: int = 25 << 20
    recipients: int = 100
    connections: int = 200
    connections_per_ip: int = 20
    command_timeout: float = 300.0      # seconds idle after the first MAIL (RFC 5321 4.5.3.2.7)
    connections_per_network: int = 20   # public clients per IPv4 /24 or IPv6 /64 (smtp/slots.py)
    connections_reserved: int | None = None  # of `connections`, only for trusted networks and member
    #                                          gateways; None: a quarter of them
    idle_before_mail: float = 60.0      # seconds idle allowed before a session's first MAIL
    header_bytes: int = 64 << 10   # the header block, parsed whole or refused (mail/headers.py)
    header_fields: int = 1000
    data_timeout: float = 600.0         # seconds from 354 to the end of data; not read from [limits]

    def __post_init__(self) -> None:
        if self.connections_reserved is None:
            object.__setattr__(self, "connections_reserved", self.connections // 4)


@dataclass(frozen=True)
class AuthBudget:
    """``[auth]``: password guessing (authlimit.py)."""
    max_failures: int = 10          # failed logins per source (IPv4 address, IPv6 /64) or account...
    failure_window: float = 900.0   # ...within this many seconds...
    lock_seconds: float = 900.0     # ...lock it (454 4.7.0) for this long, audited as auth-locked
    session_failures: int = 3       # failed AUTH per SMTP session; the next gets 421 4.7.0 and a close


def _limits(lim: dict) -> Limits:
    """[limits]: every value positive, except connections_reserved (0: no reserve; below connections;
    by default a quarter of them)."""
    values = {k: _get(lim, k, type(v), v, "limits") for k, v in vars(Limits()).items() if k != "data_timeout"}
    if "connections_reserved" not in lim:
        del values["connections_reserved"]  # Limits keeps a quarter of connections
    for k, v in values.items():
        if k != "connections_reserved":
            _positive(v, f"limits.{k}")
    limits = Limits(**values)
    if not 0 <= limits.connections_reserved < limits.connections:
        raise ConfigError("limits.connections_reserved must be from 0 to less than limits.connections")
    return limits


@dataclass(frozen=True)
class Retry:
    first: float = 300.0          # seconds before the first retry
    cap: float = 3600.0           # the longest wait between two tries
    give_up_after: float = 5 * 86400.0


@dataclass(frozen=True)
class QueueSettings:
    """``[queue]``: how long finished messages' metadata is kept (bodies go when delivered)."""
    retention: float = 30 * 86400.0   # then removed by the running gateway (queue/retention.py)
    purge_interval: float = 3600.0    # seconds between two of its sweeps


def _queue_settings(data: dict) -> QueueSettings:
    table, default = _table(data, "queue"), QueueSettings()
    interval = parse_duration(table.get("purge_interval", default.purge_interval), "queue.purge_interval")
    return QueueSettings(parse_duration(table.get("retention", default.retention), "queue.retention"),
                         _positive(interval, "queue.purge_interval"))


@dataclass(frozen=True)
class GatewayConfig:
    home: Path
    domains: tuple[str, ...]
    hostname: str
    database_url: str
    listeners: tuple[Listener, ...]
    tls_cert: Path
    tls_key: Path
    passwords_file: Path
    local_delivery: str            # "maildir" | "relay" | "lmtp"
    relay_to: tuple[str, int] | None
    non_member_policy: str         # "refuse" | "allow-plain"
    workers: int
    lease_seconds: float
    poll_interval: float
    federation_authority: str | None
    federation_manifest: Path
    openpgp_keys: dict[str, str]   # domain -> fingerprint of the domain key in the key store
    dkim_keys: tuple[DkimKeyConfig, ...]
    limits: Limits = field(default_factory=Limits)
    retry: Retry = field(default_factory=Retry)
    auth_budget: AuthBudget = field(default_factory=AuthBudget)
    queue: QueueSettings = field(default_factory=QueueSettings)
    processes: int = 1             # serve processes sharing the listeners (SO_REUSEPORT) and the queue
    cpu_workers: int | None = None  # crypto worker processes per serve process; 0 = threads; None = auto

    delivery_process: bool | None = None  # delivery in a child process; None = auto
    auto_migrate: bool = False     # database.auto_migrate: serve upgrades an older schema itself

    def separate_delivery(self, crypto_workers: int) -> bool:
        """delivery.process, with "auto" resolved: a process of its own when there are crypto workers
        (that is, more than one core for one serve process)."""
        return crypto_workers > 0 if self.delivery_process is None else self.delivery_process

    def crypto_workers(self, several_processes: bool = False) -> int:
        """cpu_workers, with "auto" resolved: one per core (at most 4), none when several serve
        processes share the cores."""
        if self.cpu_workers is not None:
            return self.cpu_workers
        cores = os.cpu_count() or 1
        if cores < 2 or several_processes or self.processes > 1:
            return 0
        return min(cores, AUTO_CPU_WORKERS)
    directory_refresh: float = 86400.0   # [directory] refresh_seconds
    federation_fetch: ManifestFetch | None = None  # [federation] url: fetched by the running gateway
    audit_anchoring: Anchoring | None = None       # [audit] checkpoints (config_ops.py)
    lmtp: tuple[str, int] | str | None = None  # delivery.lmtp: (host, port) or a unix socket's path
    log: LogSettings = field(default_factory=LogSettings)  # [log] format, addresses, level (logs.py)

    def listener(self, name: str) -> Listener | None:
        return next((li for li in self.listeners if li.name == name), None)

    def serves(self, domain: str) -> bool:
        return domain.lower() in self.domains

    @classmethod
    def load(cls, home: Home) -> "GatewayConfig":
        if not home.config_file.exists():
            raise ConfigError(f"no gateway configuration in {home.path}; run 'securemail gateway init'")
        return cls.from_dict(read_toml(home.config_file), home.path)

    @classmethod
    def from_dict(cls, data: dict, home: Path) -> "GatewayConfig":
        gw = _table(data, "gateway")
        domains = gw.get("domains")
        if not isinstance(domains, list) or not domains or not all(isinstance(d, str) and "." in d for d in domains):
            raise ConfigError("gateway.domains must be a non-empty list of domain names")
        path = lambda p: (home / p) if not Path(p).is_absolute() else Path(p)  # noqa: E731
        listeners = _listeners(_table(data, "listeners"))
        tls, dl, fed, keys = (_table(data, n) for n in ("tls", "delivery", "federation", "keys"))
        local = _get(dl, "local", str, "maildir", "delivery")
        if local not in ("maildir", "relay", "lmtp"):
            raise ConfigError("delivery.local must be 'maildir', 'relay' or 'lmtp'")
        relay_to = dl.get("relay_to")
        if local == "relay" and not relay_to:
            raise ConfigError("delivery.relay_to (HOST:PORT) is needed when delivery.local = 'relay'")
        policy = _get(dl, "non_member_policy", str, "refuse", "delivery")
        if policy not in ("refuse", "allow-plain"):
            raise ConfigError("delivery.non_member_policy must be 'refuse' or 'allow-plain'")
        lim, rt = _table(data, "limits"), _table(data, "retry")
        return cls(
            home=home, domains=tuple(d.lower() for d in domains),
            hostname=_get(gw, "hostname", str, domains[0], "gateway"),
            processes=_processes(gw),
            cpu_workers=_cpu_workers(gw),
            delivery_process=_delivery_process(dl),
            database_url=_get(_table(data, "database"), "url", str, f"sqlite:///{home / 'securemail.db'}", "database"),
            auto_migrate=_get(_table(data, "database"), "auto_migrate", bool, False, "database"),
            listeners=listeners,
            tls_cert=path(_get(tls, "cert", str, "tls/cert.pem", "tls")),
            tls_key=path(_get(tls, "key", str, "tls/key.pem", "tls")),
            passwords_file=path(_get(_table(data, "auth"), "passwords_file", str, "passwords", "auth")),
            local_delivery=local,
            relay_to=parse_hostport(relay_to, "delivery.relay_to") if relay_to else None,
            lmtp=_lmtp(dl, local),
            non_member_policy=policy,
            workers=_positive(_get(dl, "workers", int, 4, "delivery"), "delivery.workers"),
            lease_seconds=_positive(_get(dl, "lease_seconds", float, 300.0, "delivery"), "delivery.lease_seconds"),
            poll_interval=_positive(_get(dl, "poll_interval", float, 1.0, "delivery"), "delivery.poll_interval"),
            federation_authority=fed.get("authority"),
            federation_manifest=path(_get(fed, "manifest", str, "federation.json", "federation")),
            federation_fetch=manifest_fetch(fed), audit_anchoring=anchoring(_table(data, "audit"), home),
            openpgp_keys={k.lower(): str(v).upper() for k, v in _table(keys, "openpgp").items()},
            dkim_keys=_dkim_keys(keys, path),
            limits=_limits(lim),
            auth_budget=AuthBudget(*(_positive(_get(_table(data, "auth"), k, type(v), v, "auth"), f"auth.{k}")
                                     for k, v in vars(AuthBudget()).items())),
            retry=Retry(*(_positive(_get(rt, k, float, v, "retry"), f"retry.{k}") for k, v in vars(Retry()).items())),
            queue=_queue_settings(data),
            directory_refresh=_refresh(data), log=LogSettings.from_table(_table(data, "log")),
        )
