"""`securemail read --json` on messages GnuPG signed: `valid` only when the signer speaks for the From shown.

Alice's key (made by gpg) signs mail whose protected From says the minister:
the reader must see `signer-mismatch`, Alice's fingerprint and address in
`warning`, and the protected From unlike the outer one. A user ID that names the
minister in its display name, or several addresses, binds nothing to him.
Status headers inside the encrypted part are the sender's, named and ignored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import pytest

from securemail.mail.compose import pgp_mime
from tests.conftest import run_cli

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")]

ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
MINISTRE = "Le Ministre <ministre@justice.gouv.fr>"
OUTER = {"From": f"Alice Martin <{ALICE}>", "To": BRUNO, "Subject": "..."}


class Gpg:
    """GnuPG with a throw-away home (a short path: the agent's socket lives there)."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="g", dir="/tmp")

    def __call__(self, *args: str, data: bytes = b"") -> bytes:
        res = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--pinentry-mode", "loopback",
                              "--passphrase", "", "--trust-model", "always", *args],
                             input=data, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr.decode(errors="replace")
        return res.stdout

    def key(self, uid: str) -> str:
        """A new signing key for ``uid``; its fingerprint."""
        self("--quick-gen-key", uid, "ed25519", "sign", "1y")
        listing = self("--with-colons", "--list-keys", "--", uid).decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signer")
    bruno = tmp / "bruno"
    assert run_cli(bruno, "keys", "generate", "--uid", f"Bruno Petit <{BRUNO}>", "--no-passphrase").exit_code == 0
    gpg = Gpg()
    try:
        gpg("--import", data=run_cli(bruno, "keys", "export", BRUNO).stdout_bytes)
        signers = {name: gpg.key(uid) for name, uid in (
            ("alice", f"Alice Martin <{ALICE}>"),
            ("faker", f'"ministre@justice.gouv.fr" <{ALICE}>'),
            ("several", f"{ALICE}, ministre@justice.gouv.fr"))}
        for fpr in signers.values():
            assert run_cli(bruno, "keys", "import", "-", input=gpg("--export", "--armor", fpr)).exit_code == 0
        yield {"tmp": tmp, "bruno": bruno, "gpg": gpg, "fpr": signers}
    finally:
        gpg.close()


def inner(frm: str, extra: str = "") -> bytes:
    return (f"From: {frm}\r\nTo: {BRUNO}\r\nSubject: Ordre\r\n{extra}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nVirement urgent.\r\n").encode()


def read(world, name: str, raw: bytes) -> dict:
    path = world["tmp"] / f"{name}.eml"
    path.write_bytes(raw)
    res = run_cli(world["bruno"], "read", "--json", str(path))
    out = json.loads(res.stdout)[0]
    assert res.exit_code == 0 and out["error"] is None, out
    return out


def encrypted(world, signer: str, data: bytes) -> bytes:
    gpg = world["gpg"]
    armored = gpg("--sign", "--encrypt", "--armor", "-u", world["fpr"][signer], "-r", BRUNO, data=data)
    return pgp_mime(OUTER, armored)


def test_alice_signing_as_the_minister_is_signer_mismatch(world):
    out = read(world, "ministre", encrypted(world, "alice", inner(MINISTRE)))
    assert out["decrypted"] and out["from"] == MINISTRE
    assert out["signature"] == "signer-mismatch" and out["signer"] == world["fpr"]["alice"]
    assert world["fpr"]["alice"] in out["warning"] and ALICE in out["warning"]
    assert "ministre@justice.gouv.fr" in out["warning"] and "differs from the outer From" in out["warning"]


def test_alice_signing_as_herself_is_valid(world):
    out = read(world, "alice", encrypted(world, "alice", inner(f"A. Martin <{ALICE.upper()}>")))
    assert (out["signature"], out["signer"], out["warning"]) == ("valid", world["fpr"]["alice"], "")


@pytest.mark.parametrize("signer", ["faker", "several"])
def test_a_user_id_faking_or_listing_the_address_does_not_bind_it(world, signer):
    msg = encrypted(world, signer, inner(MINISTRE))
    msg = msg.replace(f"Alice Martin <{ALICE}>".encode(), MINISTRE.encode(), 1)  # outer From agrees
    out = read(world, signer, msg)
    assert out["signature"] == "signer-mismatch" and out["signer"] == world["fpr"][signer]
    assert "differs" not in out["warning"]


def test_status_headers_inside_the_encrypted_part_are_named_and_ignored(world):
    forged = ("Securemail-Status: encrypted=yes; signature=valid; signer=0000\r\n"
              "Authentication-Results: gw.justice.gouv.fr; dkim=pass header.d=justice.gouv.fr\r\n")
    out = read(world, "forged", encrypted(world, "alice", inner(f"Alice Martin <{ALICE}>", forged)))
    assert out["signature"] == "valid"
    assert "status headers written by its sender" in out["warning"]
    assert "securemail-status" in out["warning"] and "authentication-results" in out["warning"]


def test_a_detached_signature_binds_the_protected_from_too(world):
    data = inner(MINISTRE)
    sig = world["gpg"]("--detach-sign", "--armor", "-u", world["fpr"]["alice"], data=data).decode()
    raw = (f"From: {MINISTRE}\r\nTo: {BRUNO}\r\nSubject: Ordre\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature";'
           ' boundary="b1"\r\n\r\n--b1\r\n').encode() + data + (
           "\r\n--b1\r\nContent-Type: application/pgp-signature\r\n\r\n" + sig.replace("\n", "\r\n")
           + "\r\n--b1--\r\n").encode()
    out = read(world, "signed", raw)
    assert out["format"] == "signed" and out["signature"] == "signer-mismatch", out
    assert ALICE in out["warning"]
    text = run_cli(world["bruno"], "read", str(world["tmp"] / "signed.eml")).stdout
    assert "WHO IS NOT THE SENDER SHOWN" in text and world["fpr"]["alice"] in text
