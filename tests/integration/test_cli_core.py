"""The person-facing CLI: home, keys, send and read, as a script would drive them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def fpr_of(res) -> str:
    assert res.exit_code == 0, res.output
    return res.stdout.strip()


@pytest.fixture
def pw(tmp_path):
    p = tmp_path / "pw"
    p.write_text("a long passphrase\n")
    return p


def test_home_is_private_and_secret_keys_protected(tmp_path, pw):
    home = tmp_path / "h"
    fpr = fpr_of(run_cli(home, "keys", "generate", "--uid", "A <a@interieur.gouv.fr>", "--passphrase-file", str(pw)))
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "securemail.db").st_mode) == 0o600
    listing = json.loads(run_cli(home, "keys", "list", "--json").stdout)
    (k,) = listing
    assert k["fingerprint"] == fpr and k["secret"] and k["protected"] and k["state"] == "valid"
    assert k["algorithm"] == "ed25519" and k["can_encrypt"] and k["addresses"] == ["a@interieur.gouv.fr"]
    out = tmp_path / "sec.asc"
    assert run_cli(home, "keys", "export", fpr, "--secret", "--output", str(out)).exit_code == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")


def test_generate_needs_an_explicit_passphrase_choice(tmp_path):
    res = run_cli(tmp_path / "h", "keys", "generate", "--uid", "A <a@x.fr>")
    assert res.exit_code == 2 and "--no-passphrase" in res.stderr


@pytest.mark.parametrize("algo,expect", [("ed25519", "ed25519"), ("rsa3072", "rsa")])
def test_generate_algorithms_and_expiry(tmp_path, algo, expect):
    home = tmp_path / "h"
    fpr_of(run_cli(home, "keys", "generate", "--uid", "A <a@x.fr>", "--algorithm", algo,
                   "--expires", "30d", "--no-passphrase"))
    (k,) = json.loads(run_cli(home, "keys", "list", "--json").stdout)
    assert k["algorithm"] == expect and k["expires"] is not None and not k["protected"]


def test_import_reports_each_key_and_fails_only_on_refusal(tmp_path, corpus):
    home = tmp_path / "h"
    keys = corpus["dir"] / "keys"
    res = run_cli(home, "keys", "import", str(keys / "bruno.pub.asc"), str(keys / "emma.pub.asc"))
    assert res.exit_code == 0
    fpr = {name: k["fingerprint"] for name, k in corpus["keys"].items()}
    assert f"new {fpr['bruno']}" in res.stdout and "[revoked]" in res.stdout
    again = run_cli(home, "keys", "import", str(keys / "bruno.pub.asc"))
    assert again.exit_code == 0 and again.stdout.startswith("unchanged")
    garbage = tmp_path / "garbage.asc"
    garbage.write_bytes(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n")
    bad = run_cli(home, "keys", "import", str(garbage), str(keys / "denis.pub.asc"))
    assert bad.exit_code == 1 and "refused" in bad.stderr and f"new {fpr['denis'][:8]}" in bad.stdout


def test_broken_self_signature_refused_with_reason(tmp_path, corpus):
    data = bytearray((corpus["dir"] / "keys" / "denis.pub.asc").read_bytes())
    from securemail.crypto import armor, packets
    binary = bytearray(armor.dearmor(bytes(data))[1])
    uid = next(p for p in packets.read_packets(bytes(binary)) if p.tag == packets.UID)
    i = bytes(binary).find(uid.body)
    binary[i + 1] ^= 0x20  # "Denis" -> "DEnis": the self-signature no longer matches
    f = tmp_path / "tampered.gpg"
    f.write_bytes(bytes(binary))
    res = run_cli(tmp_path / "h", "keys", "import", str(f))
    assert res.exit_code == 1 and "broken self-signature" in res.stderr


def test_revoke_and_delete(tmp_path):
    home = tmp_path / "h"
    fpr = fpr_of(run_cli(home, "keys", "generate", "--uid", "A <a@x.fr>", "--no-passphrase"))
    res = run_cli(home, "keys", "revoke", fpr, "--reason", "retired", "--comment", "left office")
    assert res.exit_code == 0 and res.stdout.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    (k,) = json.loads(run_cli(home, "keys", "list", "--json").stdout)
    assert k["state"] == "revoked" and k["revocation_reason"] == "left office" and not k["can_encrypt"]
    assert run_cli(home, "keys", "delete", fpr).exit_code == 0
    assert json.loads(run_cli(home, "keys", "list", "--json").stdout) == []


@pytest.fixture
def pair(tmp_path):
    alice, bruno = tmp_path / "alice", tmp_path / "bruno"
    fpr_of(run_cli(alice, "keys", "generate", "--uid", "Alice <alice@interieur.gouv.fr>", "--no-passphrase"))
    bfpr = fpr_of(run_cli(bruno, "keys", "generate", "--uid", "Bruno <bruno@justice.gouv.fr>", "--no-passphrase"))
    run_cli(alice, "keys", "import", "-", input=run_cli(bruno, "keys", "export", bfpr).stdout_bytes)
    return alice, bruno, bfpr


def send(home, out, *extra, to="bruno@justice.gouv.fr"):
    return run_cli(home, "send", "--from", "alice@interieur.gouv.fr", "--to", to, "--subject", "Objet secret",
                   "--output", str(out), *extra, input=b"corps du message\n")


def test_send_to_unknown_expired_or_revoked_key_sends_nothing(tmp_path, pair, corpus):
    alice, bruno, bfpr = pair
    out = tmp_path / "m.eml"
    res = send(alice, out, to="nobody@justice.gouv.fr")
    assert res.exit_code == 1 and "nobody@justice.gouv.fr" in res.stderr and not out.exists()
    run_cli(alice, "keys", "import", str(corpus["dir"] / "keys" / "emma.pub.asc"))
    res = send(alice, out, to="emma@culture.gouv.fr")
    assert res.exit_code == 1 and "emma@culture.gouv.fr" in res.stderr and "revoked" in res.stderr
    assert not out.exists()


def test_send_output_is_pgp_mime_with_hidden_subject_and_read_shows_it(tmp_path, pair):
    alice, bruno, _ = pair
    out = tmp_path / "m.eml"
    assert send(alice, out).exit_code == 0
    raw = out.read_bytes()
    assert b"multipart/encrypted" in raw and b"Subject: ...\r\n" in raw
    assert b"Objet secret" not in raw and b"corps du message" not in raw
    res = run_cli(bruno, "read", "--json", str(out))
    (r,) = json.loads(res.stdout)
    assert res.exit_code == 0 and r["subject"] == "Objet secret" and r["body"] == "corps du message\n"
    assert r["signature"] == "unknown-key"  # bruno has not imported alice's key
    mine = run_cli(alice, "read", "--json", str(out))  # encrypted to the sender too
    assert json.loads(mine.stdout)[0]["decrypted"] is True


def test_read_usage_error_exit_2(tmp_path):
    res = run_cli(tmp_path / "h", "read", str(tmp_path / "missing.eml"))
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_protected_key_needs_its_passphrase_to_read(tmp_path, pw):
    home = tmp_path / "h"
    fpr_of(run_cli(home, "keys", "generate", "--uid", "A <a@x.fr>", "--passphrase-file", str(pw)))
    out = tmp_path / "self.eml"
    res = run_cli(home, "send", "--from", "a@x.fr", "--to", "a@x.fr", "--subject", "s", "--output", str(out),
                  "--passphrase-file", str(pw), input=b"hello\n")
    assert res.exit_code == 0, res.stderr
    locked = json.loads(run_cli(home, "read", "--json", str(out)).stdout)[0]
    assert "give --passphrase-file" in locked["error"] and not locked["decrypted"]
    opened = json.loads(run_cli(home, "read", "--json", "--passphrase-file", str(pw), str(out)).stdout)[0]
    assert opened["decrypted"] and opened["body"] == "hello\n" and opened["signature"] == "valid"


def test_console_scripts_run(tmp_path):
    """The installed entry points, as a person types them (no traceback on a usage error)."""
    bindir = os.path.dirname(sys.executable)
    sm = os.path.join(bindir, "securemail")
    if not os.path.exists(sm):
        pytest.skip("securemail not installed in this environment (pip install -e .)")
    p = subprocess.run([sm, "--home", str(tmp_path / "h"), "keys", "list"], capture_output=True, cwd=REPO)
    assert p.returncode == 0
    p = subprocess.run([os.path.join(bindir, "securemail-sop"), "version"], capture_output=True)
    assert p.returncode == 0 and p.stdout.strip()
    p = subprocess.run([sm, "--home", str(tmp_path / "h"), "read", "/nonexistent"], capture_output=True)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
