"""Test support: a federation of real gateways on loopback, set up with the real CLI.

``federation(tmp)`` makes an authority home and one gateway home per domain
(``gateway init`` on free ports, entries, a signed manifest installed on
each), then ``Running`` starts the gateways (``service.build`` + ``start``)
in an event loop on a background thread, as ``securemail serve`` would.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import run_cli

DOMAINS = ("interieur.gouv.fr", "justice.gouv.fr")
FAST = {"first": "1", "cap": "2", "poll_interval": "0.1", "give_up_after": "60"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(res, what: str = ""):
    assert res.exit_code == 0, f"{what}: exit {res.exit_code}\n{res.output}\n{getattr(res, 'stderr', '')}"
    return res


@dataclass
class GatewayHome:
    domain: str
    home: Path
    relay: int
    submission: int

    @property
    def cert(self) -> Path:
        return self.home / "tls" / "cert.pem"

    def tune(self, **values: str) -> None:
        """Set ``key = value`` lines of its securemail.toml (tests want fast retries)."""
        cfg = self.home / "securemail.toml"
        text = cfg.read_text()
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
            assert n, f"no {key} in config"
        cfg.write_text(text)


def federation(tmp: Path, domains=DOMAINS, *, database_urls: dict | None = None,
               trusted: str = "127.0.0.1/32", fast: bool = True) -> tuple[Path, dict[str, GatewayHome]]:
    authority = tmp / "authority"
    ok(run_cli(authority, "federation", "init", "--no-passphrase"), "federation init")
    homes: dict[str, GatewayHome] = {}
    for d in domains:
        g = GatewayHome(d, tmp / f"gw-{d}", free_port(), free_port())
        args = ["gateway", "init", "--domain", d, "--listen", f"127.0.0.1:{g.relay}",
                "--submission", f"127.0.0.1:{g.submission}", "--hostname", f"gw.{d}",
                "--trusted-network", trusted]
        if database_urls and d in database_urls:
            args += ["--database-url", database_urls[d]]
        ok(run_cli(g.home, *args), f"gateway init {d}")
        if fast:
            g.tune(**FAST)
        entry = ok(run_cli(g.home, "federation", "entry"), "federation entry").stdout
        (tmp / f"{d}.json").write_text(entry)
        ok(run_cli(authority, "federation", "add", "--entry", str(tmp / f"{d}.json")), "federation add")
        homes[d] = g
    ok(run_cli(authority, "federation", "sign", "--output", str(tmp / "federation.json")), "sign")
    listing = json.loads(ok(run_cli(authority, "keys", "list", "--json")).stdout)
    fpr = listing[0]["fingerprint"]
    (tmp / "authority.asc").write_bytes(ok(run_cli(authority, "keys", "export", fpr)).stdout_bytes)
    for g in homes.values():
        ok(run_cli(g.home, "federation", "install", str(tmp / "federation.json"), "--authority", fpr,
                   "--authority-key", str(tmp / "authority.asc")), "federation install")
    return authority, homes


def person(tmp: Path, address: str, gateway: GatewayHome, name: str = "") -> Path:
    """A person with a key whose certificate their own gateway knows (for re-encryption)."""
    home = tmp / f"person-{address}"
    ok(run_cli(home, "keys", "generate", "--uid", f"{name or address} <{address}>", "--no-passphrase"))
    cert = ok(run_cli(home, "keys", "export", address)).stdout_bytes
    ok(run_cli(gateway.home, "keys", "import", "-", input=cert))
    return home


class Running:
    """Gateways built from their homes and started in one background event loop."""

    def __init__(self, *homes: GatewayHome, wrap=None) -> None:
        self.homes = homes
        self.wrap = wrap  # optional fn(gateway) called after build, before start (test hooks)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateways = []

    def __enter__(self) -> "Running":
        from securemail.gateway.service import build
        from securemail.home import Home
        self.thread.start()
        for h in self.homes:
            gw = build(Home.open(h.home))
            if self.wrap:
                self.wrap(gw)
            self.call(gw.start())
            self.gateways.append(gw)
        return self

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc) -> None:
        for gw in self.gateways:
            self.call(gw.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
