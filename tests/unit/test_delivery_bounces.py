"""Where a DSN goes (delivery/bounces.py): to a member domain it is encrypted to the member's key and
signed with our domain key by the real outbound transform, from what the DSN is (written here, plain,
from our first domain), with no Facts of a message that never came in."""

from __future__ import annotations

import time

import pytest

from securemail.config import GatewayConfig
from securemail.crypto import keys, openpgp
from securemail.crypto import message as M
from securemail.delivery.bounces import Bounces
from securemail.delivery.dsn import build_dsn
from securemail.transform.hops import smtp_hop
from securemail.federation import Manifest, Member
from securemail.transform.routes import Transformer, protected_inner, top_headers
from securemail.mail.compose import pgp_mime

OWN, MEMBER = "interieur.gouv.fr", "justice.gouv.fr"
BRUNO, PIN = f"bruno@{MEMBER}", "ab" * 32


class Kept:
    """The queue, as far as Bounces uses it: what was enqueued."""
    audit_log = None

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def enqueue(self, sender, recipients, body, **kw) -> None:
        self.rows.append((sender, recipients, body, kw))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    signer = keys.Key(openpgp.generate(f"Gateway <postmaster@{OWN}>", "ed25519", None, None))
    domain = keys.Key(openpgp.generate(f"Gateway <postmaster@{MEMBER}>", "ed25519", None, None))
    signed: list[str] = []
    t = Transformer(hostname=f"gw.{OWN}", domain_keys={OWN: signer}, user_key=lambda r: None,
                    member_key=lambda d: domain if d == MEMBER else None, lookup=lambda k, f: None,
                    dkim_sign=lambda body, d: signed.append(d) or body)
    manifest = Manifest(1, "", {MEMBER: Member(MEMBER, ("gw.justice.gouv.fr", 25), PIN, b"", ())})
    config = GatewayConfig.from_dict({"gateway": {"domains": [OWN], "hostname": f"gw.{OWN}"}},
                                     tmp_path_factory.mktemp("home"))
    return {"t": t, "signer": signer, "domain": domain, "signed": signed, "manifest": manifest,
            "config": config}


def test_a_dsn_to_a_member_is_encrypted_to_its_key_and_signed_by_ours(world):
    now = time.time()
    dsn = build_dsn(b"From: <%s>\r\nMessage-ID: <m1@justice.gouv.fr>\r\n" % BRUNO.encode(), BRUNO,
                    f"nobody@{OWN}", "no such user", OWN, now, now, "5.1.1")
    queue = Kept()
    Bounces(world["config"], queue, world["t"], lambda: world["manifest"]).send(dsn, BRUNO)
    [(sender, recipients, body, kw)] = queue.rows
    assert sender == "" and recipients == [(BRUNO, smtp_hop("gw.justice.gouv.fr", 25, PIN))]
    assert kw["meta"] == {"route": "dsn"} and kw["audit"] == ("dsn_queued", {"rcpt_domain": MEMBER})
    assert world["signed"][-1] == OWN  # DKIM-signed as our domain
    # The clear fields of the DSN around one OpenPGP message, as the transform builds any crossing.
    assert body.split(b"boundary=")[0] == pgp_mime(top_headers(dsn), b"x").split(b"boundary=")[0]
    armor = body[body.index(b"-----BEGIN"):body.index(b"-----END PGP MESSAGE-----") + 25]
    out = M.decrypt(armor, [world["domain"]], lambda k, f: world["signer"])
    assert out.data == protected_inner(dsn)
    assert out.signature.status == "valid" and out.signature.signer == world["signer"].fingerprint
