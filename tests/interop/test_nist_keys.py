"""NIST and Brainpool keys made by GnuPG, used through securemail's CLI both ways (issue 15, item 3).

For each curve gpg makes two keys the way an administration's tooling or an
OpenPGP card does (``--quick-gen-key UID <curve> default never`` for an ECDSA
[SC] primary, then ``--quick-add-key FPR <curve> encr never`` for the ECDH [E]
subkey): "them", kept by gpg, and "us", whose secret key is imported into a
securemail home. For nistp256 and nistp384 a key made by ``keys generate
--algorithm`` stands for "us" as well.

* ``test_gpg_key_imports_and_can_encrypt``: ``keys import`` takes the cert as
  valid; ``keys list --json`` says the curve and ``can_encrypt: true``;
* ``test_gpg_mail_read_here``: gpg signs and encrypts a PGP/MIME entity to our
  key; ``read --json`` shows it decrypted and ``signature: valid`` by them;
* ``test_our_send_decrypted_by_gpg``: ``send --output`` to their key; gpg
  decrypts it and reports a good signature by our fingerprint;
* ``test_other_curve_refused_naming_it``: a gpg secp256k1 key is refused at
  import with "secp256k1 keys are not supported".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli

from .mailhelpers import encrypted_part, inner_entity, parse_entity, wrap_pgp_mime
from .peers import GpgPeer, fingerprint
from .test_interop_mail import assert_read_as, content_for

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")

NIST = ("nistp256", "nistp384", "nistp521")
BRAINPOOL = ("brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1")
CURVES = NIST + BRAINPOOL
BITS = {"nistp256": 256, "nistp384": 384, "nistp521": 521, "brainpoolP256r1": 256,
        "brainpoolP384r1": 384, "brainpoolP512r1": 512}
GENERATED = ("nistp256", "nistp384")  # keys generate --algorithm
# (curve, who "us" is): gpg's key imported with its secret, or one securemail generated.
OURS = [pytest.param(c, "gpg", id=f"{c}-gpg-made") for c in CURVES] + \
       [pytest.param(c, "securemail", id=f"{c}-generated") for c in GENERATED]


@dataclass(frozen=True)
class GpgKey:
    uid: str
    address: str
    fpr: str
    cert: bytes
    key: bytes


class GpgKeyMaker:
    """One throw-away GNUPGHOME that makes keys as the issue says gpg users do."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="sm-nist-"))
        self.home.chmod(0o700)

    def gpg(self, *args: str) -> bytes:
        p = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--no-tty",
                            "--pinentry-mode", "loopback", "--passphrase", "", *args],
                           capture_output=True, timeout=120, check=False)
        assert p.returncode == 0, (args, p.stderr.decode(errors="replace"))
        return p.stdout

    def make(self, curve: str, who: str) -> GpgKey:
        address = f"{who}-{curve.lower()}@gpg.example"
        uid = f"{who.title()} {curve} <{address}>"
        self.gpg("--quick-gen-key", uid, curve, "default", "never")
        fpr = fingerprint(self.gpg("--export", address))
        self.gpg("--quick-add-key", fpr, curve, "encr", "never")
        return GpgKey(uid, address, fpr, self.gpg("--armor", "--export", fpr),
                      self.gpg("--armor", "--export-secret-keys", fpr))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def maker():
    m = GpgKeyMaker()
    yield m
    m.close()


class MadeOnce(dict):
    """key -> make(*key), made on first use."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, item):
        self[item] = self.make(*item)
        return self[item]


@pytest.fixture(scope="module")
def gpg_keys(maker) -> MadeOnce:
    """Keys made by gpg, once per (curve, "them" or "us")."""
    return MadeOnce(maker.make)


@pytest.fixture(scope="module")
def gpg():
    with GpgPeer() as peer:
        yield peer


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nist") / "home"


def cli(home: Path, *args: str, input: bytes | None = None, ok: bool = True):
    result = run_cli(home, *args, input=input)
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


@pytest.fixture(scope="module")
def ours(home, gpg_keys) -> MadeOnce:
    """Our key, by (curve, origin): gpg's imported with its secret, or made by keys generate.

    Its cert is what securemail exports, so the peer encrypts to what we would publish.
    """
    def make(curve: str, origin: str) -> GpgKey:
        if origin == "gpg":
            uid, address = gpg_keys[curve, "us"].uid, gpg_keys[curve, "us"].address
            fpr = gpg_keys[curve, "us"].fpr
            out = cli(home, "keys", "import", "-", input=gpg_keys[curve, "us"].key).stdout
            assert out.startswith(f"new {fpr} ") and out.rstrip().endswith("[valid]"), out
        else:
            address = f"ours-{curve}@securemail.example"
            uid = f"Ours {curve} <{address}>"
            fpr = cli(home, "keys", "generate", "--uid", uid, "--algorithm", curve,
                      "--no-passphrase").stdout.strip().upper()
        row = listed(home, fpr)
        assert (row["algorithm"], row["secret"], row["can_encrypt"]) == (f"ecdsa-{curve}", True, True)
        return GpgKey(uid, address, fpr, cli(home, "keys", "export", fpr).stdout_bytes,
                      cli(home, "keys", "export", fpr, "--secret").stdout_bytes)
    return MadeOnce(make)


def their_key_here(home: Path, them: GpgKey) -> None:
    cli(home, "keys", "import", "-", input=them.cert)


def listed(home: Path, fpr: str) -> dict:
    [row] = [r for r in json.loads(cli(home, "keys", "list", "--json").stdout)
             if r["fingerprint"] == fpr]
    return row


@pytest.mark.parametrize("curve", CURVES)
def test_gpg_key_imports_and_can_encrypt(curve, gpg_keys, tmp_path):
    them = gpg_keys[curve, "them"]
    out = cli(tmp_path / "home", "keys", "import", "-", input=them.cert).stdout
    assert out.startswith(f"new {them.fpr} ") and out.rstrip().endswith("[valid]"), out
    row = listed(tmp_path / "home", them.fpr)
    assert (row["algorithm"], row["bits"]) == (f"ecdsa-{curve}", BITS[curve]), row
    assert (row["state"], row["can_encrypt"], row["secret"]) == ("valid", True, False), row


@pytest.mark.parametrize("curve,origin", OURS)
def test_gpg_mail_read_here(curve, origin, gpg, gpg_keys, ours, home, tmp_path):
    them, me = gpg_keys[curve, "them"], ours[curve, origin]
    their_key_here(home, them)
    c = content_for(them.address, me.address, f"{curve}-{origin}-from-gpg")
    armored = gpg.encrypt(inner_entity(c), [me.cert], signers=[them.key])
    (tmp_path / "in.eml").write_bytes(wrap_pgp_mime(c.sender, c.to, armored))
    result = cli(home, "read", str(tmp_path / "in.eml"), "--json", ok=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [obj] = json.loads(result.stdout)
    assert_read_as(obj, c, "valid", them.fpr)


@pytest.mark.parametrize("curve,origin", OURS)
def test_our_send_decrypted_by_gpg(curve, origin, gpg, gpg_keys, ours, home, tmp_path):
    them, me = gpg_keys[curve, "them"], ours[curve, origin]
    their_key_here(home, them)
    c = content_for(me.address, them.address, f"{curve}-{origin}-to-gpg")
    (tmp_path / "body.txt").write_text(c.body, encoding="utf-8")
    (tmp_path / c.attachment[0]).write_bytes(c.attachment[1])
    cli(home, "send", "--from", c.sender, "--to", c.to, "--subject", c.subject,
        "--body-file", str(tmp_path / "body.txt"), "--attach", str(tmp_path / c.attachment[0]),
        "--output", str(tmp_path / "out.eml"))
    _, armored = encrypted_part((tmp_path / "out.eml").read_bytes())
    out = gpg.decrypt(armored, [them.key], verify_certs=[me.cert])
    assert [v.split()[2] for v in out.verifications] == [me.fpr], out.verifications
    inner, text, files = parse_entity(out.plaintext)
    assert inner["subject"] == c.subject and inner["from"] == c.sender
    assert text.replace("\r\n", "\n").rstrip("\n") == c.body.rstrip("\n")
    assert files == [c.attachment]


def test_other_curve_refused_naming_it(maker, tmp_path):
    k1 = maker.make("secp256k1", "them")
    for blob in (k1.cert, k1.key):
        result = run_cli(tmp_path / "home", "keys", "import", "-", input=blob)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert f"refused {k1.fpr}: secp256k1 keys are not supported" in result.stderr
    listing = json.loads(cli(tmp_path / "home", "keys", "list", "--json").stdout)
    assert [r for r in listing if r["fingerprint"] == k1.fpr] == []
