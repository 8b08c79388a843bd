"""gateway init: a documented config, the domain OpenPGP keys, DKIM keys and a TLS certificate."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import parse_hostport
from ..crypto import openpgp
from ..crypto.dkim import generate_dkim_key
from ..crypto.keys import Key
from ..crypto.tls import self_signed_cert
from ..errors import UsageError
from ..home import write_atomic
from ..keys.store import KeyStore
from ..net import join_hostport, split_socket_address
from ..policy.address import is_domain
from .ports import Choice, choose


@dataclass
class InitOptions:
    domains: list[str]
    listen: str = "127.0.0.1:2525"
    submission: str | None = "127.0.0.1:5870"
    wkd: str | None = "127.0.0.1:8443"     # the key directory (HTTPS); None: no directory
    metrics: str | None = "127.0.0.1:9464"  # /metrics, /healthz, /readyz (HTTP); None: no listener
    hostname: str | None = None
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    database_url: str | None = None
    relay_to: str | None = None
    lmtp: str | None = None                # Dovecot's LMTP, HOST:PORT or a socket path: delivery.local = "lmtp"
    tls_cert: str | None = None
    tls_key: str | None = None
    key_lifetime_days: int = 730
    movable: frozenset[str] = frozenset()  # listeners left at their default: moved to a free port if busy


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, mode)


def _toml_list(items) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def init_gateway(home: Path, keys: KeyStore, opts: InitOptions) -> dict:
    """Create everything a gateway needs in ``home``; refuse to overwrite an existing config."""
    cfg = home / "securemail.toml"
    if cfg.exists():
        raise UsageError(f"{cfg} exists already; edit it, or use another --home")
    domains = [d.strip().lower() for d in opts.domains]
    for d in domains:
        if not is_domain(d):
            raise UsageError(f"not a domain name: {d!r}")
    lmtp = f"lmtp = {_lmtp(opts.lmtp)}" if opts.lmtp else '# lmtp = "127.0.0.1:24"'
    lmtp = f"{lmtp:<28} # Dovecot's LMTP, HOST:PORT or a socket path (plain, inside the office)"
    hostname = opts.hostname or f"gateway.{domains[0]}"
    listeners = {c.name: c for c in _listeners(opts)}
    at = {name: join_hostport(c.host, c.port) for name, c in listeners.items()}
    fprs, dkim = {}, []
    for d in domains:
        key = Key(openpgp.generate(f"securemail gateway <gateway@{d}>", "ed25519",
                                   dt.timedelta(days=opts.key_lifetime_days), None))
        keys.add(key, source="gateway-init")
        fprs[d] = key.fingerprint
        for algo, selector in (("ed25519", "sm-ed25519"), ("rsa2048", "sm-rsa")):
            k = generate_dkim_key(algo)
            rel = f"dkim/{d}.{selector}.pem"
            _write(home / rel, k.private_pem, 0o600)
            dkim.append((d, selector, algo, rel, k.public_txt))
    cert, tkey = opts.tls_cert or "tls/cert.pem", opts.tls_key or "tls/key.pem"
    if not opts.tls_cert:
        self_signed_cert(hostname, home / cert, home / tkey)
    db = opts.database_url or f"sqlite:///{home / 'securemail.db'}"
    text = CONFIG_TEMPLATE.format(
        domains=_toml_list(domains), hostname=hostname, db=db, listen=at["relay"],
        trusted=_toml_list(opts.trusted_networks), cert=cert, tkey=tkey,
        local="lmtp" if opts.lmtp else "relay" if opts.relay_to else "maildir",
        relay_to=f'relay_to = "{opts.relay_to}"' if opts.relay_to else '# relay_to = "127.0.0.1:25"',
        lmtp=lmtp,
        submission=(f'[listeners.submission]\nlisten = "{at["submission"]}"\nrequire_starttls = true\n'
                    'auth_required = true\n' if opts.submission else ""),
        wkd=(f'[listeners.wkd]             # the key directory (WKD and key publication), HTTPS with [tls]\n'
             f'listen = "{at["wkd"]}"\n' if opts.wkd else ""),
        metrics=at.get("metrics", "none"),
        openpgp="\n".join(f'"{d}" = "{f}"' for d, f in fprs.items()),
        dkim="\n".join(f'[[keys.dkim]]\ndomain = "{d}"\nselector = "{s}"\nalgorithm = "{a}"\n'
                       f'private_key = "{p}"\n' for d, s, a, p, _ in dkim))
    _write(cfg, text.encode(), 0o600)
    return {"config": str(cfg), "hostname": hostname, "openpgp": fprs,
            "dkim": [{"domain": d, "selector": s, "public_key": t} for d, s, _, _, t in dkim],
            "listeners": [{"name": c.name, "listen": at[c.name], "note": c.note} for c in listeners.values()]}


def _lmtp(target: str) -> str:
    """--lmtp as a TOML string, once it is HOST:PORT or the absolute path of a unix socket."""
    if split_socket_address(target) is None:
        raise UsageError(f"--lmtp must be HOST:PORT or the absolute path of a unix socket, not {target!r}")
    return json.dumps(target)  # a JSON string is a TOML basic string


def _listeners(opts: InitOptions) -> list[Choice]:
    """The relay, submission, key directory and metrics listeners: as given, or moved off a busy default."""
    wanted = [("relay", opts.listen, "--listen"), ("submission", opts.submission, "--submission"),
              ("wkd", opts.wkd, "--wkd"), ("metrics", opts.metrics, "--metrics")]
    return choose([(name, *parse_hostport(text, flag)) for name, text, flag in wanted if text], opts.movable)


CONFIG_TEMPLATE = """\
# securemail gateway configuration. Relative paths are relative to this home.
# Every setting is described in the README ("Gateway configuration").

[gateway]
domains = {domains}          # the domains this gateway serves
hostname = "{hostname}"      # EHLO name; the TLS certificate's name
processes = 1                # serve processes (one per core) sharing ports and queue

[database]
url = "{db}"                 # or postgresql+psycopg://user@host/db to run several nodes
auto_migrate = false         # true: serve upgrades an older schema itself; else `securemail gateway migrate`

[listeners.relay]            # office MTAs (trusted networks may relay out) and member gateways
listen = "{listen}"
trusted_networks = {trusted}
require_starttls = false     # office MTAs may speak plain; member gateways must use TLS (policy)
auth_required = false
auth = false                 # offer AUTH here too (over TLS); users submit on [listeners.submission]

{submission}
{wkd}
[listeners.metrics]          # /metrics (Prometheus), /healthz, /readyz over plain HTTP: keep it on
                             # loopback or a management network; listen = "none": no listener
listen = "{metrics}"

[log]                        # to stderr (journald under systemd), one line per record
format = "text"              # or "json": one object per line, the schema in the README ("Logs")
addresses = "hashed"         # local parts of addresses: "full", "hashed" (keyed, log.key) or "none"
level = "info"               # "debug", "info", "warning" or "error"

[tls]
cert = "{cert}"
key = "{tkey}"

[auth]
passwords_file = "passwords" # user:scrypt-hash lines; securemail gateway user add
max_failures = 10            # failed logins per source (IPv4 address, IPv6 /64) or per account...
failure_window = 900         # ...within these seconds lock it (454 4.7.0, audited auth-locked)...
lock_seconds = 900           # ...for this long, even with the right password
session_failures = 3         # failed AUTH per SMTP session; the next one gets 421 4.7.0 and a close

[delivery]
local = "{local}"            # "maildir" (home/Maildir/<address>), "relay" (hand to the office MTA) or "lmtp"
{relay_to}
{lmtp}
non_member_policy = "refuse" # or "allow-plain": hand non-member mail to relay_to
workers = 4                  # concurrent deliveries per process
lease_seconds = 300          # a crashed worker's deliveries are retried after this
poll_interval = 1.0

[retry]                      # like Postfix: 5 min doubling to 1 h, give up after 5 days
first = 300
cap = 3600
give_up_after = 432000

[queue]                      # a delivered message's body is removed when its last delivery settles
retention = "30d"            # then its metadata (envelope, delivery states) is kept this long
purge_interval = 3600        # seconds between the gateway's sweeps of expired metadata

[limits]
message_size = 26214400
recipients = 100
connections = 200
connections_per_ip = 20      # per client address
connections_per_network = 20 # public clients per IPv4 /24 or IPv6 /64
connections_reserved = 50    # of connections, only for trusted_networks and member gateways
idle_before_mail = 60        # seconds idle allowed before a session's first MAIL
command_timeout = 300        # seconds idle allowed after it
header_bytes = 65536         # the header block: larger, or more fields, is refused (552 5.3.4)
header_fields = 1000

[directory]
refresh_seconds = 86400      # keys found in members' directories are fetched again after this

[federation]
manifest = "federation.json"
# authority = "FINGERPRINT"  # set by: securemail federation install F --authority FPR
# url = "https://HOST/federation.json"  # the running gateway fetches the manifest there (HTTPS)...
# url_pin = "SHA256 hex"     # ...from a server whose certificate's SubjectPublicKeyInfo has this SHA-256
fetch_interval = "1h"        # how often; past its expires, mail to and from members waits (451)

[audit]
# checkpoint_interval = "1d" # sign the audit chain's head this often (securemail audit checkpoint)
checkpoint_dir = "checkpoints"
checkpoint_send = false      # also queue each to the federation authority's address

[keys]                       # securemail gateway rotate openpgp|dkim|tls, then retire (README)
switch_after = "1d"          # new key in use this long after the manifest listing it was made

[keys.openpgp]               # domain -> fingerprint of the domain key in the key store
{openpgp}

{dkim}"""
