"""Test support: a federation of real gateways on loopback, set up with the real CLI.

``federation(tmp)`` makes an authority home and one gateway home per domain
(``gateway init`` on free ports, entries, a signed manifest installed on
each), then ``Running`` starts the gateways (``service.build`` + ``start``)
in an event loop on a background thread, as ``securemail serve`` would.
``Serve`` runs a real ``securemail serve`` OS process instead. ``pg_schemas``
gives fresh PostgreSQL schemas (one database URL each) and drops them after;
``office_send`` hands mail to a gateway as the office MTA and returns its queue id.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


from tests.conftest import PG_URL, REPO, require_pg, run_cli  # noqa: F401 - re-exported

DOMAINS = ("interieur.gouv.fr", "justice.gouv.fr")
FAST = {"first": "1", "cap": "2", "poll_interval": "0.1", "give_up_after": "60"}
OFFICE = "127.0.0.3"  # the office MTA's address in the tests; gateways reach each other from 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(res, what: str = ""):
    assert res.exit_code == 0, f"{what}: exit {res.exit_code}\n{res.output}\n{getattr(res, 'stderr', '')}"
    return res


def wait_for(pred, timeout: float = 60.0, what: str = "condition", every: float = 0.1):
    """Poll ``pred`` until it returns something true; that value, or AssertionError at ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def office_send(port: int, sender: str, rcpts: list[str], msg: bytes, *, source: str = OFFICE,
                client: smtplib.SMTP | None = None) -> str:
    """One SMTP transaction as the office MTA (on ``client`` or a new connection); the queue id from the 250."""
    if client is None:
        with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=60) as s:
            return office_send(port, sender, rcpts, msg, client=s)
    client.ehlo_or_helo_if_needed()
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    for r in rcpts:
        code, text = client.rcpt(r)
        assert code in (250, 251), (r, code, text)
    code, text = client.data(msg)
    assert code == 250, (code, text)
    return re.search(r"queued as ([0-9a-f]+)", text.decode()).group(1)


def queue_rows(home: Path, message_id: str | None = None) -> list[dict]:
    """``securemail queue list --json`` on ``home``, optionally only one message's deliveries."""
    rows = json.loads(ok(run_cli(home, "queue", "list", "--json"), "queue list").stdout)
    return [r for r in rows if message_id is None or r["message_id"] == message_id]


def audit_records(home: Path, kind: str | None = None) -> list[dict]:
    recs = json.loads(ok(run_cli(home, "audit", "show", "--json"), "audit show").stdout)
    return [r for r in recs if kind is None or r["kind"] == kind]


@contextmanager
def pg_schemas(*names: str):
    """Fresh PostgreSQL schemas, yielded as {name: database URL with that search_path}; dropped after."""
    import sqlalchemy as sa
    require_pg()
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    schemas = {n: f"smgw_{n}_{tag}" for n in names}
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        base = sa.engine.make_url(PG_URL)
        yield {n: base.update_query_dict({"options": f"-csearch_path={schema}"})
               .render_as_string(hide_password=False) for n, schema in schemas.items()}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
            for schema in schemas.values():
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class GatewayHome:
    domain: str
    home: Path
    relay: int
    submission: int

    @property
    def cert(self) -> Path:
        return self.home / "tls" / "cert.pem"

    @property
    def client_cert(self) -> tuple[Path, Path]:
        """(certificate, key): what this gateway shows as a TLS client when it delivers to a member."""
        return self.cert, self.home / "tls" / "key.pem"

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

    def __init__(self, *homes: GatewayHome, wrap=None, cpu_workers: int | None = None) -> None:
        self.homes = homes
        self.wrap = wrap  # optional fn(gateway) called after build, before start (test hooks)
        self.cpu_workers = cpu_workers  # None: the config's (default "auto", a process per core)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateways = []

    def __enter__(self) -> "Running":
        from securemail.gateway.service import build
        from securemail.home import Home
        self.thread.start()
        for h in self.homes:
            gw = build(Home.open(h.home), cpu_workers=self.cpu_workers)
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


def second_node(g: GatewayHome, path: Path) -> GatewayHome:
    """A copy of ``g``'s home (same database URL, keys, certificate) listening on other ports."""
    shutil.copytree(g.home, path, ignore=shutil.ignore_patterns("Maildir", "serve.log"))
    node = GatewayHome(g.domain, path, free_port(), free_port())
    cfg = path / "securemail.toml"
    text = cfg.read_text()
    for old, new in ((g.relay, node.relay), (g.submission, node.submission)):
        text, n = re.subn(rf'(?m)^listen = "127\.0\.0\.1:{old}"$', f'listen = "127.0.0.1:{new}"', text)
        assert n == 1, f"no listener on port {old} in {cfg}"
    cfg.write_text(text)
    return node


def wait_listening(port: int, timeout: float = 60.0, alive=lambda: True) -> None:
    def up():
        alive()  # raises when the server process died
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout, f"port {port} to listen")


class Serve:
    """A real ``securemail serve`` OS process on a gateway home; its stderr goes to ``home/serve.log``."""

    def __init__(self, home: GatewayHome) -> None:
        self.home = home
        self.log = home.home / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Serve":
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "--home", str(self.home.home), "serve"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        for port in (self.home.relay, self.home.submission):
            wait_listening(port, timeout, alive=self._alive)
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"securemail serve exited with {self.proc.returncode}:\n{self.output()}")
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then the exit status (SIGKILL and None if it does not stop within ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
