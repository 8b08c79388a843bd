"""Gateway homes set up with the real CLI: a federation of them, people, a second node.

``federation(tmp)`` makes an authority home and one gateway home per domain
(``gateway init`` on free ports, the key directory's and the metrics' included, entries, a
signed manifest installed on each gateway, or on those named in ``install``);
``person`` a user whose key their gateway knows; ``second_node`` a copy of a
home, on other ports, for a second process on the same database.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .commands import ok, run_cli
from .ports import free_port

DOMAINS = ("interieur.gouv.fr", "justice.gouv.fr")
FAST = {"first": "1", "cap": "2", "poll_interval": "0.1", "give_up_after": "60"}
OFFICE = "127.0.0.3"  # the office MTA's address in the tests; gateways reach each other from 127.0.0.1


@dataclass
class GatewayHome:
    domain: str
    home: Path
    relay: int
    submission: int
    wkd: int | None = None      # the key directory's HTTPS port
    metrics: int | None = None  # the metrics listener's HTTP port (/metrics, /healthz, /readyz)

    # settings ``tune`` may add when ``gateway init`` does not write them: key -> table
    ADDABLE = {"cpu_workers": "gateway", "lmtp": "delivery"}

    @property
    def config(self) -> Path:
        return self.home / "securemail.toml"

    @property
    def cert(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.home / "tls" / "key.pem"

    @property
    def client_cert(self) -> tuple[Path, Path]:
        """(certificate, key): what this gateway shows as a TLS client when it delivers to a member."""
        return self.cert, self.key

    def domain_key(self) -> str:
        """The fingerprint of its domain's OpenPGP key."""
        with open(self.config, "rb") as fh:
            return tomllib.load(fh)["keys"]["openpgp"][self.domain]

    def tune(self, **values: str) -> None:
        """Set ``key = value`` lines of its securemail.toml (TOML values, e.g. ``"4"`` or ``'"auto"'``).

        Each key must be there once, except those in ``ADDABLE``, which are added
        at the top of their table when ``gateway init`` did not write them.
        """
        text = self.config.read_text()
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {value}  ", text)
            if n == 0 and key in self.ADDABLE:
                table = self.ADDABLE[key]
                text, n = re.subn(rf"(?m)^\[{table}\][^\n]*\n", lambda m: f"{m.group(0)}{key} = {value}\n", text)
            if n != 1:
                raise RuntimeError(f"{key} is in {self.config} {n} times")
        with_values = tomllib.loads(text)
        for key in values:
            if key in self.ADDABLE and key not in with_values.get(self.ADDABLE[key], {}):
                raise RuntimeError(f"{key} did not land in [{self.ADDABLE[key]}] of {self.config}")
        self.config.write_text(text)


def init_home(tmp: Path, domain: str, *, trusted: str, database_url: str | None = None) -> GatewayHome:
    """``gateway init`` for ``domain`` in ``tmp/gw-DOMAIN``, every listener on a free port."""
    g = GatewayHome(domain, tmp / f"gw-{domain}", free_port(), free_port(), free_port(), free_port())
    args = ["gateway", "init", "--domain", domain, "--listen", f"127.0.0.1:{g.relay}",
            "--submission", f"127.0.0.1:{g.submission}", "--wkd", f"127.0.0.1:{g.wkd}",
            "--metrics", f"127.0.0.1:{g.metrics}",
            "--hostname", f"gw.{domain}", "--trusted-network", trusted]
    if database_url:
        args += ["--database-url", database_url]
    ok(run_cli(g.home, *args), f"gateway init {domain}")
    return g


def federation(tmp: Path, domains=DOMAINS, *, database_urls: dict | None = None,
               trusted: str = "127.0.0.1/32", fast: bool = True, tune: dict | None = None,
               install=None) -> tuple[Path, dict[str, GatewayHome]]:
    """An authority and a gateway per domain; ``fast`` retries and ``tune`` set before the entries;
    the signed manifest installed on the gateways of ``install`` (default: all)."""
    authority = tmp / "authority"
    ok(run_cli(authority, "federation", "init", "--no-passphrase"), "federation init")
    homes: dict[str, GatewayHome] = {}
    for d in domains:
        g = init_home(tmp, d, trusted=trusted, database_url=(database_urls or {}).get(d))
        if fast or tune:
            g.tune(**(FAST if fast else {}), **(tune or {}))
        entry = ok(run_cli(g.home, "federation", "entry"), "federation entry").stdout
        (tmp / f"{d}.json").write_text(entry)
        ok(run_cli(authority, "federation", "add", "--entry", str(tmp / f"{d}.json")), "federation add")
        homes[d] = g
    ok(run_cli(authority, "federation", "sign", "--output", str(tmp / "federation.json")), "sign")
    listing = json.loads(ok(run_cli(authority, "keys", "list", "--json")).stdout)
    fpr = listing[0]["fingerprint"]
    (tmp / "authority.asc").write_bytes(ok(run_cli(authority, "keys", "export", fpr)).stdout_bytes)
    for d in (install if install is not None else homes):
        install_manifest(homes[d].home, tmp, fpr)
    return authority, homes


def install_manifest(home: Path, tmp: Path, fpr: str) -> None:
    """Install ``tmp/federation.json`` (signed by ``fpr``, key in ``tmp/authority.asc``) in ``home``."""
    ok(run_cli(home, "federation", "install", str(tmp / "federation.json"), "--authority", fpr,
               "--authority-key", str(tmp / "authority.asc")), "federation install")


def person(tmp: Path, address: str, gateway: GatewayHome, name: str = "") -> Path:
    """A person with a key whose certificate their own gateway knows (for re-encryption)."""
    home = tmp / f"person-{address}"
    ok(run_cli(home, "keys", "generate", "--uid", f"{name or address} <{address}>", "--no-passphrase"))
    cert = ok(run_cli(home, "keys", "export", address)).stdout_bytes
    ok(run_cli(gateway.home, "keys", "import", "-", input=cert))
    return home


def second_node(g: GatewayHome, path: Path) -> GatewayHome:
    """A copy of ``g``'s home (same database URL, keys, certificate) listening on other ports."""
    shutil.copytree(g.home, path,
                    ignore=shutil.ignore_patterns("Maildir", "serve.log", "securemail.db*", "metrics"))
    node = GatewayHome(g.domain, path, free_port(), free_port(), free_port() if g.wkd else None,
                       free_port() if g.metrics else None)
    text = node.config.read_text()
    for old, new in ((g.relay, node.relay), (g.submission, node.submission), (g.wkd, node.wkd),
                     (g.metrics, node.metrics)):
        if old is None:
            continue
        text, n = re.subn(rf'(?m)^listen = "127\.0\.0\.1:{old}"$', f'listen = "127.0.0.1:{new}"', text)
        if n != 1:
            raise RuntimeError(f"no listener on port {old} in {node.config}")
    node.config.write_text(text)
    return node
