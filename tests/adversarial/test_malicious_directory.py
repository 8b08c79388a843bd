"""Threat agent: a malicious key directory (a member's WKD, or one user who can publish there).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 3: a directory binds its key to addresses of other domains ---------------
import json as _json_f3  # noqa: E402 - appended block (finding 3)
import ssl as _ssl_f3  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace as _NS_f3  # noqa: E402

CULTURE = "culture.gouv.fr"
CEO, DG = f"ceo@{CULTURE}", f"dg@{CULTURE}"
F3_MARKER = "KEY-BINDING-MARKER-7e1d"


@pytest.fixture(scope="module")
def rogue_directory(tmp_path_factory):
    """Three members with key directories. interieur.gouv.fr (A) and culture.gouv.fr run real
    gateways; justice.gouv.fr's directory is hostile: the real WKD server code on justice's
    address and TLS key (the manifest's pin), answering for bruno a key whose user IDs also
    claim ceo@ and dg@culture.gouv.fr and alice@interieur.gouv.fr (a rogue member, or one
    user there able to publish such a key)."""
    from securemail.keys.wkd_server import WkdServer
    from securemail.keys.wkd import wkd_hash
    from tests.support import Running, ok, run_cli
    from tests.integration.test_key_directory import Fed, directory_federation
    from tests.unit.test_wkd import new_key, with_uid
    tmp = tmp_path_factory.mktemp("rogue-directory")
    homes, wkd, fpr = directory_federation(tmp, domains=(OWN, JUSTICE, CULTURE))
    fed = Fed(tmp, homes, wkd, fpr)
    evil = new_key(f"Bruno <{BRUNO}>")
    for uid in (f"Ceo <{CEO}>", f"Dg <{DG}>", f"Alice <{ALICE}>"):
        evil = with_uid(evil, uid)
    ok(run_cli(homes[CULTURE].home, "gateway", "user", "add", CEO, "--password-file", str(fed.pw)))
    people = {a: fed.person(a) for a in (CEO, ALICE)}
    evil_home = tmp / "person-evil"                       # the attacker holds the hostile key's secret
    ok(run_cli(evil_home, "keys", "import", "-", input=evil.armored()), "import the hostile key")
    j = homes[JUSTICE]
    tls = _ssl_f3.SSLContext(_ssl_f3.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(j.cert), str(j.home / "tls" / "key.pem"))
    hostile = _NS_f3(domains=(JUSTICE,), served=lambda address: evil.public().binary(),
                     address_for=lambda d, hu: BRUNO if hu == wkd_hash("bruno") else None)
    server = WkdServer("127.0.0.1", wkd[JUSTICE], tls, hostile, None, lambda u, p: False)
    with Running(homes[OWN], homes[CULTURE], cpu_workers=0) as running:
        running.call(server.start())
        try:
            yield _NS_f3(fed=fed, evil=evil, people=people, evil_home=evil_home)
        finally:
            running.call(server.stop())


def _f3_office(home, rcpt: str, subject: str) -> list[str]:
    """Office mail from A's trusted network for ``rcpt``: the fingerprints A encrypted it to."""
    from tests.support import office_send, ok, run_cli
    msg = (f"From: Agent <agent@{OWN}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@{OWN}>\r\n\r\nTexte {F3_MARKER}.\r\n").encode()
    mid = office_send(home.relay, f"agent@{OWN}", [rcpt], msg)
    return _json_f3.loads(ok(run_cli(home.home, "queue", "show", mid)).stdout)["meta"]["encrypted_to"]


def _f3_domain_key(home) -> str:
    from tests.support import ok, run_cli
    listing = _json_f3.loads(ok(run_cli(home.home, "keys", "list", "--json")).stdout)
    return next(k["fingerprint"] for k in listing if f"gateway@{home.domain}" in k["addresses"])


def _f3_read(person, path) -> dict:
    from tests.support import run_cli
    return _json_f3.loads(run_cli(person, "read", "--json", str(path)).stdout)[0]


def test_a_directory_binds_nothing_outside_its_own_domain(rogue_directory):
    """Justice's directory answers for bruno with a key that also claims ceo@ and dg@culture and
    alice@interieur. A uses it for bruno (justice speaks for its own users) and for nothing else:
    ceo's mail goes to ceo's own key (culture's directory), dg's to culture's domain key,
    alice's to the key A's operator imported; what crossed to culture is readable by ceo's key
    and not by the hostile one."""
    from tests.support import ok, run_cli, wait_for
    r = rogue_directory
    fed, evil, a, c = r.fed, r.evil, r.fed.homes[OWN], r.fed.homes[CULTURE]
    assert _f3_office(a, BRUNO, "f3-bruno") == [evil.fingerprint]   # fetched from justice's WKD
    # afterwards: ceo publishes her own key at culture, A's operator imports alice's
    ok(fed.publish(r.people[CEO], CEO), "ceo publishes at culture")
    cert = ok(run_cli(r.people[ALICE], "keys", "export", ALICE)).stdout_bytes
    ok(run_cli(a.home, "keys", "import", "-", input=cert), "operator imports alice's key")
    ceo_fpr, alice_fpr = fed.fpr_of(r.people[CEO], CEO), fed.fpr_of(r.people[ALICE], ALICE)
    time.sleep(0.3)                                # the running gateway sees the CLI's key store change
    assert _f3_office(a, CEO, "f3-ceo") == [ceo_fpr]
    assert _f3_office(a, DG, "f3-dg") == [_f3_domain_key(c)]       # no key of dg's: culture's domain key
    assert _f3_office(a, ALICE, "f3-alice") == [alice_fpr]
    listing = _json_f3.loads(ok(run_cli(a.home, "keys", "list", "--json")).stdout)
    assert [k["uids"] for k in listing if k["fingerprint"] == evil.fingerprint] == [[f"Bruno <{BRUNO}>"]]
    got = wait_for(lambda: sorted((c.home / "Maildir" / CEO / "new").glob("*")) if
                   (c.home / "Maildir" / CEO / "new").exists() else [], what="delivery to ceo at culture")
    assert F3_MARKER.encode() not in got[0].read_bytes()            # crossed encrypted
    mine = _f3_read(r.people[CEO], got[0])
    assert mine["decrypted"] and F3_MARKER in mine["body"]
    theirs = _f3_read(r.evil_home, got[0])
    assert theirs["encrypted"] and not theirs["decrypted"]          # the hostile key reads nothing


def test_a_directory_update_cannot_add_another_domains_address(rogue_directory):
    """The same hostile key fetched again (refresh) still binds bruno only: the update merged
    into the stored key neither adds the other user IDs nor any binding."""
    from tests.support import ok, run_cli
    r = rogue_directory
    a = r.fed.homes[OWN]
    located = _json_f3.loads(ok(run_cli(a.home, "keys", "locate", BRUNO, "--refresh", "--json")).stdout)
    assert (located["status"], located["fingerprint"]) == ("fetched", r.evil.fingerprint)
    for address in (CEO, DG, ALICE):
        res = run_cli(a.home, "keys", "accept", address, r.evil.fingerprint)
        assert res.exit_code != 0 and address in res.stderr            # no pin without a binding
    listing = _json_f3.loads(ok(run_cli(a.home, "keys", "list", "--json")).stdout)
    assert [k["addresses"] for k in listing if k["fingerprint"] == r.evil.fingerprint] == [[BRUNO]]
