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
  import with "secp256k1 keys are not supported";
* ``test_nist_keys_through_two_running_gateways``: the same keys through the
  gateways' submission, encryption, re-encryption and crypto worker processes;
* ``test_sop_tools_both_ways_on_p256``: sqop, gosop and pgpainless-cli encrypt
  to our P-256 key, and decrypt our send and verify our P-256 signature.
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

    def make(self, curve: str, who: str, address: str = "") -> GpgKey:
        address = address or f"{who}-{curve.lower()}@gpg.example"
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


def send_to_file(home, c, tmp_path) -> None:
    """``securemail send`` of content ``c`` (body and one attachment) to ``tmp_path/out.eml``."""
    (tmp_path / "body.txt").write_text(c.body, encoding="utf-8")
    (tmp_path / c.attachment[0]).write_bytes(c.attachment[1])
    cli(home, "send", "--from", c.sender, "--to", c.to, "--subject", c.subject,
        "--body-file", str(tmp_path / "body.txt"), "--attach", str(tmp_path / c.attachment[0]),
        "--output", str(tmp_path / "out.eml"))


@pytest.mark.parametrize("curve,origin", OURS)
def test_our_send_decrypted_by_gpg(curve, origin, gpg, gpg_keys, ours, home, tmp_path):
    them, me = gpg_keys[curve, "them"], ours[curve, origin]
    their_key_here(home, them)
    c = content_for(me.address, them.address, f"{curve}-{origin}-to-gpg")
    send_to_file(home, c, tmp_path)
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


# Through two running gateways: alice (a P-384 key made by keys generate) sends end to end
# to bruno (a gpg-made P-521 key); the office's plain mail to bruno is encrypted by interieur's
# gateway and re-encrypted to bruno's P-521 key by justice's, in its crypto worker process.

def test_nist_keys_through_two_running_gateways(gpg, maker, tmp_path):
    from tests.support import OFFICE, Running, federation, ok, office_send, wait_for

    _, homes = federation(tmp_path, trusted=OFFICE + "/32")
    a, b = homes["interieur.gouv.fr"], homes["justice.gouv.fr"]
    alice_home, bruno_home = tmp_path / "alice", tmp_path / "bruno"
    alice_fpr = cli(alice_home, "keys", "generate", "--uid", "Alice <alice@interieur.gouv.fr>",
                    "--algorithm", "nistp384", "--no-passphrase").stdout.strip()
    bruno = maker.make("nistp521", "bruno", "bruno@justice.gouv.fr")
    cli(bruno_home, "keys", "import", "-", input=bruno.key)
    alice_cert = cli(alice_home, "keys", "export", alice_fpr).stdout_bytes
    bruno_cert = cli(bruno_home, "keys", "export", bruno.fpr).stdout_bytes
    for home, cert in ((a.home, alice_cert), (b.home, bruno_cert), (alice_home, bruno_cert),
                       (bruno_home, alice_cert)):
        cli(home, "keys", "import", "-", input=cert)
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    cli(a.home, "gateway", "user", "add", "alice@interieur.gouv.fr", "--password-file", str(pw))
    (tmp_path / "body.txt").write_text("Note P-384 vers P-521.\n")
    maildir = b.home / "Maildir" / "bruno@justice.gouv.fr" / "new"

    def delivered(n):
        return wait_for(lambda: len(list(maildir.glob("*"))) >= n and sorted(maildir.iterdir()),
                        what=f"delivery {n} to bruno")

    with Running(a, b, cpu_workers=1):
        ok(run_cli(alice_home, "send", "--from", "alice@interieur.gouv.fr",
                   "--to", "bruno@justice.gouv.fr", "--subject", "Note P-384",
                   "--body-file", str(tmp_path / "body.txt"), "--server", f"127.0.0.1:{a.submission}",
                   "--starttls", "--cafile", str(a.cert), "--username", "alice@interieur.gouv.fr",
                   "--password-file", str(pw)), "send")
        first = delivered(1)[0]
        office_send(a.relay, "alice@interieur.gouv.fr", ["bruno@justice.gouv.fr"],
                    b"From: alice@interieur.gouv.fr\r\nTo: bruno@justice.gouv.fr\r\n"
                    b"Subject: Office P-521\r\nMessage-ID: <nist-office@interieur.gouv.fr>\r\n\r\n"
                    b"Texte du bureau pour P-521.\r\n")
        second = [f for f in delivered(2) if f != first][0]
    [e2e] = json.loads(cli(bruno_home, "read", "--json", str(first)).stdout)
    assert (e2e["decrypted"], e2e["signature"], e2e["signer"]) == (True, "valid", alice_fpr), e2e
    assert e2e["subject"] == "Note P-384" and "P-384 vers P-521" in e2e["body"]
    [office] = json.loads(cli(bruno_home, "read", "--json", str(second)).stdout)
    assert office["decrypted"] and office["subject"] == "Office P-521", office
    assert "Texte du bureau pour P-521." in office["body"]
    _, armored = encrypted_part(second.read_bytes())  # gpg opens what justice's gateway made
    assert b"Texte du bureau pour P-521." in gpg.decrypt(armored, [bruno.key]).plaintext


# The SOP tools (sqop, gosop, pgpainless-cli) with a gpg-made P-256 key on each side.

@pytest.mark.parametrize("name", ["sqop", "gosop", "pgpainless"])
def test_sop_tools_both_ways_on_p256(name, peer_pool, gpg_keys, ours, home, tmp_path):
    peer, them, me = peer_pool.get(name), gpg_keys["nistp256", "them"], ours["nistp256", "gpg"]
    their_key_here(home, them)
    c = content_for(them.address, me.address, f"p256-from-{name}")
    armored = peer.encrypt(inner_entity(c), [me.cert])
    (tmp_path / "in.eml").write_bytes(wrap_pgp_mime(c.sender, c.to, armored))
    [obj] = json.loads(cli(home, "read", str(tmp_path / "in.eml"), "--json").stdout)
    assert_read_as(obj, c, "none", None)
    c = content_for(me.address, them.address, f"p256-to-{name}")
    send_to_file(home, c, tmp_path)
    out = peer.decrypt(encrypted_part((tmp_path / "out.eml").read_bytes())[1], [them.key],
                       verify_certs=[me.cert])
    assert me.fpr in [v.split()[2] for v in out.verifications], out.verifications
    assert parse_entity(out.plaintext)[0]["subject"] == c.subject
