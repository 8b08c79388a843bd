"""Running gateways: in this process (``Running``) or as ``securemail serve`` OS processes (``Serve``).

``Running`` starts gateways (``app.open_gateway`` + ``start``) in an event loop on
a background thread, as ``securemail serve`` would. ``office_send`` hands mail
to a gateway as the office MTA and returns its queue id; ``queue_rows`` and
``audit_records`` read a home's queue and audit log through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

from .commands import REPO, ok, run_cli
from .homes import OFFICE, GatewayHome
from .waits import terminate, wait_listening


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


class Running:
    """Gateways built from their homes and started in one background event loop."""

    def __init__(self, *homes: GatewayHome, wrap=None, cpu_workers: int | None = None) -> None:
        self.homes = homes
        self.wrap = wrap  # optional fn(gateway) called after build, before start (test hooks)
        self.cpu_workers = cpu_workers  # None: the config's (default "auto", a process per core)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateways = []

    def build_options(self) -> dict:
        """What ``app.open_gateway`` is given for each home (a subclass may add a clock)."""
        return {"cpu_workers": self.cpu_workers}

    def __enter__(self) -> "Running":
        from securemail.app import open_gateway as build
        from securemail.home import Home
        self.thread.start()
        for h in self.homes:
            gw = build(Home.open(h.home), **self.build_options())
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
        return terminate(self.proc, timeout)
