"""Fixtures for the hostile-input tests: two real gateways, the table of replies, a health check.

One federation (interieur.gouv.fr = A, justice.gouv.fr = J), set up with the real
CLI and started in-process as ``securemail serve`` would. A runs with the
default limits; J with small ones (message size, recipients, connections per
address, command timeout) so that every limit can be reached quickly. Tests
play the office MTA (127.0.0.3, A's and J's trusted network), justice's
gateway (127.0.0.1, STARTTLS, DKIM with justice's own key files) or a stranger.

After every test both gateways must still answer a normal session. Every
reply a test records goes into one table; with ``SECUREMAIL_PROOF_OUT=path``
the table is written there as JSON at the end of the session (for
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support import GatewayHome, Running, federation
from tests.integration.refusal_helpers import Enrolled, enrol, queued

from . import ALICE, BRUNO, JUSTICE, OFFICE, OWN, Raw, assert_no_leak

PASSWORD = "correct horse battery"
J_LIMITS = {"message_size": "100000", "recipients": "3", "connections_per_ip": "3",
            "command_timeout": "2"}


class Hostile(Enrolled):
    """``Enrolled`` with J (justice, small limits) running too."""

    @property
    def j(self) -> GatewayHome:
        return self.homes[JUSTICE]

    def queued(self, gateway: GatewayHome | None = None) -> set[str]:
        """Ids of the queued messages, without the DSNs the gateways write in the background."""
        return {r["message_id"] for r in queued(gateway or self.a) if r["sender"]}


@pytest.fixture(scope="session")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    _, homes = federation(tmp, domains=(OWN, JUSTICE), trusted=OFFICE + "/32")
    a, j = homes[OWN], homes[JUSTICE]
    j.tune(**J_LIMITS)
    eml = enrol(tmp, a, j, ALICE, BRUNO, PASSWORD)
    with Running(a, j) as running:
        yield Hostile(tmp, homes, eml, running, own=OWN)


# --- the table of replies ----------------------------------------------------------------
class ProofTable:
    """(case, reply) pairs in the order observed; written as JSON for the reliability note."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, case: str, reply: str, **extra) -> None:
        assert_no_leak(reply)
        self.rows.append({"case": case, "reply": " ".join(reply.split("\n")), **extra})

    def dump(self, path: str) -> None:
        doc = {"suite": "hostile", "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "cases": self.rows}
        Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def proof():
    table = ProofTable()
    yield table
    out = os.environ.get("SECUREMAIL_PROOF_OUT")
    if out:
        table.dump(out)


@pytest.fixture
def record(proof, request):
    """record(case, reply, **extra): leak-check the reply and add it to the table."""
    def add(case: str, reply, **extra) -> None:
        proof.add(case, str(reply), test=request.node.nodeid, **extra)
    return add


# --- raw clients and the health check -------------------------------------------------------
@pytest.fixture
def raw():
    """raw(port, source=OFFICE) -> Raw; every client is closed after the test."""
    opened: list[Raw] = []

    def connect(port: int, source: str = OFFICE, timeout: float = 30) -> Raw:
        opened.append(Raw(port, source, timeout))
        return opened[-1]

    yield connect
    for client in opened:
        client.close()


def _normal_session(port: int, hostname: str) -> None:
    """EHLO, NOOP, MAIL, RCPT, RSET, QUIT from the office, each with its exact reply."""
    deadline = time.monotonic() + 10
    while True:  # a test's own connections may take a moment to be released
        client = Raw(port, OFFICE, timeout=10)
        try:
            banner = client.reply()
            if banner == "421 4.7.0 Too many connections" and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            assert banner == f"220 {hostname} ESMTP", banner
            assert client.cmd(b"EHLO office.interieur.gouv.fr").startswith(f"250-{hostname}\n")
            assert client.cmd(b"NOOP") == "250 2.0.0 OK"
            assert client.cmd(f"MAIL FROM:<{ALICE}>".encode()) == "250 2.1.0 Sender OK"
            assert client.cmd(f"RCPT TO:<{ALICE}>".encode()) == "250 2.1.5 Recipient OK"
            assert client.cmd(b"RSET") == "250 2.0.0 OK"
            assert client.cmd(b"QUIT") == "221 2.0.0 Bye"
            return
        finally:
            client.close()


@pytest.fixture(autouse=True)
def still_serving(gw):
    """After every hostile case, both gateways answer a normal session correctly."""
    yield
    _normal_session(gw.a.relay, f"gw.{OWN}")
    _normal_session(gw.j.relay, f"gw.{JUSTICE}")

