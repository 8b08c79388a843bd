"""Support for the status-header, signer and plaintext-at-rest tests (issue 10, findings 2, 5, 8).

Messages as a member's gateway or user writes them (signed with real keys taken
from their homes, encrypted with securemail's own OpenPGP code), forged status
headers, the office MTA (an aiosmtpd ``Controller`` on loopback that records
what it is given), and ``relay_gw``: a federation whose interieur.gouv.fr
gateway runs with ``delivery.local = "relay"`` and hands its mail to that MTA.
Only interieur's gateway runs there; the tests play justice's gateway.
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from securemail.crypto import message as M
from securemail.crypto.keys import Key, load_key
from securemail.mail.compose import pgp_mime
from tests.conftest import run_cli
from tests.hostile import ALICE, BRUNO, JUSTICE, OFFICE, OWN
from tests.hostile.conftest import PASSWORD, Hostile
from tests.support import GatewayHome, Running, federation, free_port, ok, wait_for
from tests.integration.refusal_helpers import enrol

FORGED_STATUS = "encrypted=yes; signature=valid; signer=FORGED0000"
FORGED_AR = f"gw.{OWN}; dkim=pass header.d={JUSTICE}; forged=yes"
FORGED = f"Securemail-Status: {FORGED_STATUS}\r\nAuthentication-Results: {FORGED_AR}\r\n"
MINISTRE = f"Le Ministre <ministre@{JUSTICE}>"
OUR_MINISTER = f"Le Ministre <ministre@{OWN}>"


def marker() -> str:
    return f"PLAINTEXT-{uuid.uuid4().hex}"


def person_home(tmp: Path, address: str) -> Path:
    """The home ``enrol`` made for ``address`` (tests.support.person)."""
    return tmp / f"person-{address}"


def domain_fpr(g: GatewayHome) -> str:
    config = tomllib.loads((g.home / "securemail.toml").read_text())
    return config["keys"]["openpgp"][g.domain]


def cert(home: Path, ident: str) -> Key:
    return load_key(ok(run_cli(home, "keys", "export", ident), f"export {ident}").stdout_bytes)


def secret_key(home: Path, fpr: str | None = None) -> Key:
    """A secret key of a home (its only one, or ``fpr``), unlocked: what its owner signs with."""
    from securemail.app import open_home
    core = open_home(home)
    try:
        keys = [k for k in core.keys.secret_keys() if fpr is None or k.fingerprint == fpr]
    finally:
        core.close()
    assert len(keys) == 1, f"{len(keys)} secret keys in {home}"
    keys[0].pgp.unlocked(None).__enter__()  # test keys have no passphrase
    return keys[0]


def inner(frm: str, to: str, text: str, extra: str = "") -> bytes:
    """The protected message (RFC 9788): its headers are what the reader is shown."""
    return (f"From: {frm}\r\nTo: <{to}>\r\nSubject: Note {text}\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nTexte {text}.\r\n").encode()


def sealed(data: bytes, to: list[tuple[Key, str]], signer: Key, *, frm: str, msgid: str,
           outer: str = "") -> bytes:
    """``data`` signed and encrypted in PGP/MIME, the ``outer`` header lines on top."""
    armored = M.encrypt(data, to, signer=signer)
    body = pgp_mime({"From": frm, "To": to[0][1], "Message-ID": f"<{msgid}>"}, armored)
    return outer.encode() + body


def parsed(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)


def values(msg: EmailMessage, name: str) -> list[str]:
    return [" ".join(str(v).split()) for v in msg.get_all(name, [])]


def at_rest(home: Path, text: str) -> list[str]:
    """The queue database files of a SQLite gateway home that hold ``text``."""
    return [p.name for p in sorted(home.glob("securemail.db*")) if text.encode() in p.read_bytes()]


def maildir_file(g: GatewayHome, address: str, msgid: str, timeout: float = 60) -> Path:
    """The delivered file whose headers carry ``msgid``."""
    new = g.home / "Maildir" / address / "new"

    def find():
        for f in sorted(new.iterdir()) if new.exists() else ():
            if f"<{msgid}>".encode() in f.read_bytes()[:8192]:
                return f
        return None
    return wait_for(find, timeout, f"delivery of {msgid} to {address}")


def read_json(home: Path, path: Path) -> dict:
    import json
    res = run_cli(home, "read", "--json", str(path))
    out = json.loads(res.stdout)[0]
    assert res.exit_code == 0 and out["error"] is None, out
    return out


class OfficeMta:
    """The office MTA: records each message; answers DATA with ``reply``."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.attempts = 0
        self.reply = "250 2.0.0 OK"

    async def handle_DATA(self, server, session, envelope):
        self.attempts += 1
        if self.reply.startswith("250"):
            self.received.append(envelope.original_content or envelope.content)
        return self.reply

    def get(self, text: str, timeout: float = 60) -> bytes:
        """The message holding ``text`` (the office gets the decrypted message: no outer headers)."""
        return wait_for(lambda: next((m for m in self.received if text.encode() in m), None),
                        timeout, f"the office MTA to receive {text}")


@dataclass
class RelayWorld:
    hostile: Hostile          # its ``a`` runs in relay mode; ``j`` is played by the tests
    office: OfficeMta

    @property
    def a(self) -> GatewayHome:
        return self.hostile.a


@pytest.fixture(scope="session")
def relay_gw(tmp_path_factory):
    """interieur.gouv.fr's gateway in relay mode, its office MTA on loopback; bruno's key known there."""
    from aiosmtpd.controller import Controller
    tmp = tmp_path_factory.mktemp("relay-office")
    _, homes = federation(tmp, domains=(OWN, JUSTICE), trusted=OFFICE + "/32")
    a = homes[OWN]
    office, port = OfficeMta(), free_port()
    controller = Controller(office, hostname="127.0.0.1", port=port)
    controller.start()
    cfg = a.home / "securemail.toml"
    text = cfg.read_text()
    assert 'local = "maildir"' in text and '# relay_to = "127.0.0.1:25"' in text
    cfg.write_text(text.replace('local = "maildir"', 'local = "relay"')
                   .replace('# relay_to = "127.0.0.1:25"', f'relay_to = "127.0.0.1:{port}"'))
    eml = enrol(tmp, a, homes[JUSTICE], ALICE, BRUNO, PASSWORD)
    bruno = ok(run_cli(person_home(tmp, BRUNO), "keys", "export", BRUNO)).stdout_bytes
    ok(run_cli(a.home, "keys", "import", "-", input=bruno), "operator imports bruno's key")
    try:
        with Running(a):
            yield RelayWorld(Hostile(tmp, homes, eml), office)
    finally:
        controller.stop()
