"""A gateway of its own for the tests that lock accounts and fill connection slots.

The shared ``gw`` gateways must keep serving the other tests: a locked alice
or a full slot table there would break them. ``guarded_gateway`` is one real
gateway (interieur.gouv.fr, its own one-member federation, so 127.0.0.1 is a
member gateway address) with small limits, a key directory on a free port and
two submission users; the tests drive it over real sockets.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import time
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import run_cli
from tests.hostile import OFFICE, OWN, Raw
from tests.support import GatewayHome, Running, federation, ok

PASSWORD = "correct horse battery"
USERS = (f"alice@{OWN}", f"bob@{OWN}")
LIMITS = {"connections": "16", "connections_reserved": "4", "connections_per_network": "4",
          "idle_before_mail": "1", "command_timeout": "30"}


@dataclass
class Guarded:
    home: GatewayHome
    wkd: int

    @property
    def submission(self) -> int:
        return self.home.submission

    @property
    def relay(self) -> int:
        return self.home.relay

    def session(self, source: str, *, port: int | None = None) -> Raw:
        """A raw session on the submission port from ``source``, after STARTTLS and EHLO."""
        client = Raw(port or self.submission, source, timeout=30)
        client.greet(b"EHLO laptop.example.org", tls=True)
        return client

    def publish(self, user: str, password: str, source: str) -> tuple[int, str, str, float]:
        """POST a publication with Basic auth: (status, body, WWW-Authenticate, seconds)."""
        ctx = ssl.create_default_context(cafile=str(self.home.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", self.wkd, context=ctx, timeout=30,
                                           source_address=(source, 0))
        token = b64encode(f"{user}:{password}".encode()).decode()
        try:
            conn.connect()
            started = time.perf_counter()
            conn.request("POST", "/securemail/v1/publish", body=b"{}",
                         headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
            answer = conn.getresponse()
            body = answer.read().decode()
            return answer.status, body, answer.getheader("WWW-Authenticate", ""), time.perf_counter() - started
        finally:
            conn.close()


def auth_plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + b64encode(f"\0{user}\0{password}".encode())


@contextlib.contextmanager
def guarded_gateway(tmp: Path):
    """Start the gateway; yields a ``Guarded``."""
    _, homes = federation(tmp, domains=(OWN,), trusted=OFFICE + "/32")
    home = homes[OWN]
    home.tune(**LIMITS)
    pw = tmp / "pw"
    pw.write_text(PASSWORD + "\n")
    for user in USERS:
        ok(run_cli(home.home, "gateway", "user", "add", user, "--password-file", str(pw)), "user add")
    with Running(home, cpu_workers=0):
        yield Guarded(home, home.wkd)
