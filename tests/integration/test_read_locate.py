"""A signer's key found in the federation's directory (issue 15, item 2), between two real gateways.

Two fresh people on two running gateways with key directories, no key imported by hand in either
direction: each one's ``read --json`` says ``signature: valid`` for the other's mail, the key found by
the From address in the sender's domain's directory. ``--offline``, a directory serving another key
than the one that signed, no manifest, and a stopped directory all leave ``unknown-key`` with the
reason in ``warning``. The receiving gateway's Securemail-Status does the same lookup for mail it
decrypts with its domain key.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

from tests.support import Running, ok, wait_for
from .test_key_directory import MARKER, Fed, directory_federation, maildir

A, B = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, BRUNO, CLAIRE, DAVID = (f"alice@{A}", f"bruno@{B}", f"claire@{A}", f"david@{A}")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("read-locate")
    homes, wkd, fpr = directory_federation(tmp)
    f = Fed(tmp, homes, wkd, fpr)
    for address in (ALICE, BRUNO, CLAIRE, DAVID):
        ok(run_cli(f.gw(address).home, "gateway", "user", "add", address, "--password-file", str(f.pw)))
    f.people = {a: f.person(a) for a in (ALICE, BRUNO, CLAIRE, DAVID)}
    with Running(*homes.values()) as running:
        f.running = running
        yield f


def deliver(fed: Fed, sender: str, rcpt: str, subject: str) -> Path:
    """``send`` from sender to rcpt (the recipient's key located by send), and the file delivered."""
    g = fed.gw(rcpt)
    before = len(maildir(g, rcpt))
    ok(fed.send(fed.people[sender], sender, rcpt, subject), f"send {sender} -> {rcpt}")
    return wait_for(lambda: maildir(g, rcpt)[before:], what=f"delivery to {rcpt}")[0]


def read_json(home: Path, path: Path, *flags: str):
    res = run_cli(home, "read", "--json", *flags, str(path))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)[0], res.stderr


def test_two_fresh_people_see_each_others_signature_valid(fed):
    for who in (ALICE, BRUNO):
        ok(fed.publish(fed.people[who], who), f"publish {who}")
    alice_fpr, bruno_fpr = fed.fpr_of(fed.people[ALICE], ALICE), fed.fpr_of(fed.people[BRUNO], BRUNO)
    got = deliver(fed, ALICE, BRUNO, "Aller")
    offline, _ = read_json(fed.people[BRUNO], got, "--offline")
    assert offline["decrypted"] and MARKER in offline["body"]
    assert offline["signature"] == "unknown-key"                       # today's behaviour, no network
    out, err = read_json(fed.people[BRUNO], got)
    assert (out["signature"], out["signer"], out["warning"]) == ("valid", alice_fpr, "")
    assert f"found {alice_fpr} for {ALICE} (wkd:{A})" in err
    stored = [k for k in json.loads(ok(run_cli(fed.people[BRUNO], "keys", "list", "--json")).stdout)
              if k["fingerprint"] == alice_fpr]
    assert [k["bound"] for k in stored] == [{ALICE: f"directory:{A}"}]  # bound by her domain's directory
    back = deliver(fed, BRUNO, ALICE, "Retour")
    out, _ = read_json(fed.people[ALICE], back)
    assert (out["signature"], out["signer"], out["subject"]) == ("valid", bruno_fpr, "Retour")


def test_a_directory_key_that_did_not_sign_stays_unknown(fed):
    """Claire's directory serves her first key; she signs with a second one it never served."""
    home = fed.people[CLAIRE]
    ok(fed.publish(home, CLAIRE), "publish claire's first key")
    ok(fed.publish(fed.people[BRUNO], BRUNO), "publish bruno")
    served = fed.fpr_of(home, CLAIRE)
    ok(run_cli(home, "keys", "generate", "--uid", f"Claire <{CLAIRE}>", "--no-passphrase"))
    signing = fed.fpr_of(home, CLAIRE)
    assert signing != served
    out, _ = read_json(fed.people[BRUNO], deliver(fed, CLAIRE, BRUNO, "Autre cle"))
    assert out["decrypted"] and out["signature"] == "unknown-key"
    assert f"the key for {CLAIRE} ({served}) did not make this signature" in out["warning"]
    assert out["signer"] != served                                     # the issuer, not the key served


def test_the_gateway_status_finds_the_signer_key(fed):
    """Alice signs with her own key and encrypts to justice's domain key: the justice gateway decrypts,
    finds her key in interieur's directory and says valid in Securemail-Status."""
    from securemail.app import open_home
    from securemail.crypto import message as M
    from securemail.crypto.keys import load_key
    from securemail.mail.compose import Draft, inner_entity, pgp_mime
    from securemail.mail.outgoing import signing_key, submit
    for who in (ALICE, BRUNO):
        ok(fed.publish(fed.people[who], who), f"publish {who}")
    domain_key = load_key(ok(run_cli(fed.homes[B].home, "keys", "export", f"gateway@{B}")).stdout_bytes)
    core = open_home(fed.people[ALICE])
    try:
        me = signing_key(core.keys, ALICE, time.time())
        draft = Draft(sender=ALICE, to=[BRUNO], subject="Par la passerelle", body=f"{MARKER}\n")
        headers = draft.headers()
        with me.pgp.unlocked(None):
            armored = M.encrypt(inner_entity(draft, headers), [(domain_key, BRUNO)], signer=me)
    finally:
        core.close()
    g = fed.homes[B]
    before = len(maildir(g, BRUNO))
    submit(pgp_mime(headers, armored), ALICE, [BRUNO], f"127.0.0.1:{fed.homes[A].submission}",
           username=ALICE, password="correct horse battery", cafile=str(fed.homes[A].cert))
    got = wait_for(lambda: maildir(g, BRUNO)[before:], what="delivery to bruno")[0]
    status = next(line for line in got.read_bytes().decode().splitlines()
                  if line.lower().startswith("securemail-status:"))
    assert "signature=valid" in status and f"signer={me.fingerprint}" in status, status
    out, _ = read_json(fed.people[BRUNO], got)
    assert (out["signature"], out["signer"]) == ("valid", me.fingerprint)


def test_no_manifest_or_a_stopped_directory_leaves_unknown_key_with_the_reason(fed, tmp_path):
    """Runs last: it stops interieur's gateway (and its directory)."""
    ok(fed.publish(fed.people[DAVID], DAVID), "publish david")
    ok(fed.publish(fed.people[BRUNO], BRUNO), "publish bruno")
    got = deliver(fed, DAVID, BRUNO, "Sans annuaire")
    bare = tmp_path / "bruno-without-manifest"
    shutil.copytree(fed.people[BRUNO], bare)
    (bare / "federation.json").unlink()
    out, _ = read_json(bare, got)
    assert out["signature"] == "unknown-key"
    assert "signer key not found: no federation manifest is installed in this home" in out["warning"]
    gw = fed.running.gateways[list(fed.homes).index(A)]
    fed.running.call(gw.stop())
    fed.running.gateways.remove(gw)
    start = time.monotonic()
    out, _ = read_json(fed.people[BRUNO], got)
    assert time.monotonic() - start < 30
    assert out["decrypted"] and out["signature"] == "unknown-key"
    assert f"signer key not found: the directory of {A} could not be reached" in out["warning"]
