"""Test support for the refusal tests: one SMTP transaction with its reply, DKIM as a member, the queue.

``transact`` drives a session step by step (EHLO, optional STARTTLS, MAIL,
RCPT, DATA) and returns the first reply that is not a success, or the reply to
DATA, so a test can assert code and enhanced code exactly. ``signer_for``
DKIM-signs with the keys a gateway home really holds (its securemail.toml
``[[keys.dkim]]``), as that member's gateway would.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path

from securemail.crypto.dkim import DkimSigner

from tests.support import GatewayHome, Running, ok
from tests.conftest import run_cli

GATEWAY_PEER = "127.0.0.1"   # where member gateways connect from (not a trusted network)
OFFICE = "127.0.0.3"         # the office MTA (the trusted network)
STRANGER = "127.0.0.2"       # neither
OWN, JUSTICE = "interieur.gouv.fr", "justice.gouv.fr"


@dataclass
class Enrolled:
    """A federation whose alice (at ``own``) and bruno have keys (``enrol``): the refusal and the
    hostile-input tests' world, in which a test plays a member gateway or the office."""
    tmp: Path
    homes: dict[str, GatewayHome]
    encrypted: bytes                # PGP/MIME from bruno to alice, as bruno's client wrote it, unsigned
    running: Running | None = None  # the started gateways (a test may watch what one of them receives)
    authority: Path | None = None   # the federation authority's home
    own: str = OWN                  # the domain of the gateway under test, ``a``

    @property
    def a(self) -> GatewayHome:
        return self.homes[self.own]

    def signed(self, data: bytes, domain: str = JUSTICE) -> bytes:
        """``data`` with CRLF line ends, DKIM-signed as ``domain``'s gateway signs."""
        return signer_for(self.homes[domain]).sign(crlf(data))


@dataclass(frozen=True)
class Reply:
    stage: str                 # the command answered: MAIL, RCPT, DATA, ...
    code: int
    text: str                  # after the code: "5.7.1 Relay access denied"

    @property
    def enhanced(self) -> str:
        return self.text.split(" ", 1)[0]

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def reply(stage: str, code: int, text: bytes | str) -> Reply:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return Reply(stage, code, " ".join(text.split()))


def crlf(data: bytes) -> bytes:
    """Every line ending as CRLF (corpus files may use LF, or both)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def transact(port: int, sender: str, rcpts: list[str], data: bytes, *, source: str = GATEWAY_PEER,
             starttls: bool = True, helo: str = "gw.justice.gouv.fr", cert: GatewayHome | None = None) -> Reply:
    """One mail transaction; the first refusal (MAIL, RCPT) or the reply to the end of DATA.

    ``cert``: the member gateway whose TLS certificate the session shows on STARTTLS, as that
    gateway does when it delivers (its own ``tls/cert.pem`` and ``tls/key.pem``)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=60) as s:
        s.ehlo(helo)
        if starttls:
            code, text = s.starttls(context=client_context(cert))
            assert code == 220, (code, text)
            s.ehlo(helo)
        code, text = s.mail(sender)
        if code != 250:
            return reply("MAIL", code, text)
        for r in rcpts:
            code, text = s.rcpt(r)
            if code != 250:
                return reply("RCPT", code, text)
        try:
            code, text = s.data(data)
        except smtplib.SMTPDataError as e:  # refused at the DATA command itself
            return reply("DATA", e.smtp_code, e.smtp_error)
        return reply("DATA", code, text)


def client_context(cert: GatewayHome | None = None) -> ssl.SSLContext:
    """A member gateway's TLS client: any server certificate (self-signed), ``cert``'s own shown."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*(str(p) for p in cert.client_cert))
    return ctx


def signer_for(gateway: GatewayHome) -> DkimSigner:
    """A DKIM signer with every key the gateway home has for its domain."""
    config = tomllib.loads((gateway.home / "securemail.toml").read_text())
    keys = [(k["selector"], (gateway.home / k["private_key"]).read_bytes(), k["algorithm"])
            for k in config["keys"]["dkim"] if k["domain"] == gateway.domain]
    return DkimSigner(gateway.domain, keys)


def queued(gateway: GatewayHome) -> list[dict]:
    """The gateway's queue as ``securemail queue list --json`` shows it."""
    return json.loads(ok(run_cli(gateway.home, "queue", "list", "--json"), "queue list").stdout)


def queued_messages(gateway: GatewayHome) -> set[str]:
    """Ids of the messages in the queue (delivery states move on in the background; ids do not)."""
    return {row["message_id"] for row in queued(gateway)}


def enrol(tmp, alice_gw: GatewayHome, bruno_gw: GatewayHome, alice: str, bruno: str,
          password: str) -> bytes:
    """Alice and Bruno with keys at their gateways, Alice a submission user; the
    end-to-end encrypted .eml Bruno wrote to Alice (as a member gateway would pass it on)."""
    from tests.support import person
    a_home = person(tmp, alice, alice_gw, "Alice Martin")
    b_home = person(tmp, bruno, bruno_gw, "Bruno Petit")
    ok(run_cli(b_home, "keys", "import", "-", input=ok(run_cli(a_home, "keys", "export", alice)).stdout_bytes))
    out = tmp / "encrypted.eml"
    ok(run_cli(b_home, "send", "--from", bruno, "--to", alice, "--subject", "Note", "--output", str(out),
               input=b"Texte chiffre de bout en bout.\n"), "send --output")
    pw = tmp / "pw"
    pw.write_text(password + "\n")
    ok(run_cli(alice_gw.home, "gateway", "user", "add", alice, "--password-file", str(pw)), "user add")
    return out.read_bytes()
