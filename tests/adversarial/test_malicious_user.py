"""Threat agent: a malicious authenticated user of a member office (submission AUTH, key publication).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 3: a user publishes a key for other addresses ----------------------------
import json as _json_f3  # noqa: E402 - appended block (finding 3)

CULTURE = "culture.gouv.fr"
MINISTER, CEO = f"minister@{OWN}", f"ceo@{CULTURE}"


@pytest.fixture(scope="module")
def publishing(tmp_path_factory):
    """interieur.gouv.fr (A) and culture.gouv.fr, real gateways with real key directories; alice
    has a submission account at A, whose publish endpoint she talks to with `keys publish`."""
    from tests.integration.gateways import Running, ok, run_cli
    from tests.integration.test_key_directory import Fed, directory_federation
    tmp = tmp_path_factory.mktemp("rogue-publisher")
    homes, wkd, fpr = directory_federation(tmp, domains=(OWN, CULTURE))
    fed = Fed(tmp, homes, wkd, fpr)
    ok(run_cli(homes[OWN].home, "gateway", "user", "add", ALICE, "--password-file", str(fed.pw)))
    with Running(homes[OWN], homes[CULTURE], cpu_workers=0):
        yield fed


def _f3_home_with(fed, name: str, key):
    """A person's home holding ``key`` (secret) and the federation manifest."""
    from tests.integration.gateways import ok, run_cli
    from tests.integration.test_key_directory import install
    home = fed.tmp / name
    ok(run_cli(home, "keys", "import", "-", input=key.armored()), "import")
    install(home, fed.tmp, fed.fpr)
    return home


def _f3_served(fed, address: str) -> bytes | None:
    from securemail.keys.wkd import advanced_path
    status, body = fed.get(OWN, advanced_path(address))
    return body if status == 200 else None


def _f3_encrypted_to(home, rcpt: str, subject: str) -> list[str]:
    from tests.integration.gateways import office_send, ok, run_cli
    msg = (f"From: Agent <agent@{OWN}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@{OWN}>\r\n\r\nTexte.\r\n").encode()
    mid = office_send(home.relay, f"agent@{OWN}", [rcpt], msg)
    return _json_f3.loads(ok(run_cli(home.home, "queue", "show", mid)).stdout)["meta"].get("encrypted_to", [])


def test_publication_of_a_key_for_other_addresses_is_refused(publishing):
    """alice@interieur publishes, properly signed and authenticated, a key that also carries
    minister@interieur and ceo@culture: refused with the reason printed, nothing stored or
    served; later mail for minister@ and ceo@ is never encrypted to alice's key."""
    from tests.integration.gateways import ok, run_cli
    from tests.unit.test_wkd import new_key, with_uid
    fed, a = publishing, publishing.homes[OWN]
    rogue = with_uid(with_uid(new_key(f"Alice <{ALICE}>"), f"Le Ministre <{MINISTER}>"), f"Ceo <{CEO}>")
    res = fed.publish(_f3_home_with(fed, "alice-rogue", rogue), ALICE)
    assert res.exit_code == 1
    assert (f"refused (400): key has user IDs for other addresses ({CEO}, {MINISTER}); "
            f"publish a key whose only user ID is {ALICE}") in res.stderr
    assert _f3_served(fed, ALICE) is None and _f3_served(fed, MINISTER) is None
    listing = _json_f3.loads(ok(run_cli(a.home, "keys", "list", "--json")).stdout)
    assert rogue.fingerprint not in {k["fingerprint"] for k in listing}
    # the operator imports the minister's real key; mail for the minister goes to it, and mail for
    # ceo@culture (no key of hers in culture's directory) to culture's domain key
    minister = new_key(f"Le Ministre <{MINISTER}>")
    ok(run_cli(a.home, "keys", "import", "-", input=minister.public().armored()), "operator import")
    assert _f3_encrypted_to(a, MINISTER, "f3-minister") == [minister.fingerprint]
    culture = _json_f3.loads(ok(run_cli(fed.homes[CULTURE].home, "keys", "list", "--json")).stdout)
    assert _f3_encrypted_to(a, CEO, "f3-ceo") == [next(k["fingerprint"] for k in culture
                                                       if f"gateway@{CULTURE}" in k["addresses"])]


def test_an_update_of_a_published_key_cannot_add_other_addresses(publishing):
    """alice publishes a clean key, then the same key with minister@ added: the update is refused,
    what is served for alice keeps her user ID alone, and minister@ is never bound to it."""
    from tests.integration.gateways import ok, run_cli
    from tests.unit.test_wkd import new_key, with_uid
    fed, a = publishing, publishing.homes[OWN]
    clean = new_key(f"Alice <{ALICE}>")
    ok(fed.publish(_f3_home_with(fed, "alice-clean", clean), ALICE), "publish the clean key")
    grown = with_uid(clean, f"Le Ministre <{MINISTER}>")
    res = fed.publish(_f3_home_with(fed, "alice-grown", grown), ALICE)
    assert res.exit_code == 1 and f"other addresses ({MINISTER})" in res.stderr
    served = _f3_served(fed, ALICE)
    assert served is not None and b"Alice" in served and MINISTER.encode() not in served
    assert _f3_served(fed, MINISTER) is None
    res = run_cli(a.home, "keys", "accept", MINISTER, clean.fingerprint)
    assert res.exit_code != 0                                       # no binding, no pin
    assert clean.fingerprint not in _f3_encrypted_to(a, MINISTER, "f3-minister-2")
