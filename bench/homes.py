"""Gateway homes for the benchmark, set up with the real CLI by tests/support (as the tests are).

``make_federation`` makes an authority and two gateway homes, the sender
(interieur.gouv.fr, office network 127.0.0.3/32) and the receiver
(justice.gouv.fr), on free loopback ports, and installs the signed manifest on
the sender. Only the sender runs; the receiver's relay port and its own TLS
certificate serve the null STARTTLS sink, so the manifest's pin matches.
Ports, second nodes and PostgreSQL schemas come from tests/support.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support import OFFICE, GatewayHome, cli, federation

SENDER, RECEIVER = "interieur.gouv.fr", "justice.gouv.fr"


@dataclass
class Federation:
    authority: Path
    sender: GatewayHome
    receiver: GatewayHome

    def receiver_certificate(self) -> bytes:
        """The receiving domain's OpenPGP certificate (armored), what gpg-filter encrypts to."""
        return cli(self.receiver.home, "keys", "export", self.receiver.domain_key()).encode()


def make_federation(root: Path, *, sender_db: str | None = None, **tuning) -> Federation:
    """Authority, sender and receiver homes under ``root``; ``tuning`` goes to the sender's config."""
    authority, homes = federation(root, (SENDER, RECEIVER), database_urls={SENDER: sender_db} if sender_db else None,
                                  trusted=f"{OFFICE}/32", fast=False, install=(SENDER,))
    if tuning:
        homes[SENDER].tune(**tuning)
    return Federation(authority, homes[SENDER], homes[RECEIVER])

