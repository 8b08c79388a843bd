"""The mail interop matrix: securemail's CLI against gpg, sqop, gosop and pgpainless-cli, both ways.

Rows are the test functions, columns their ids (``pytest -v`` prints the matrix):

* ``test_their_key_imports_here[gpg-rsa3072->here]``: a peer's certificate is
  imported as new and valid, and ``keys list`` says it can encrypt;
* ``test_peer_encrypts_to_our_key[ours-ed25519->sqop]``: the peer encrypts to our
  exported certificate, ``securemail read`` decrypts (not signed);
* ``test_peer_verifies_our_signature[ours-rsa3072->gpg]``: our key (exported with
  ``--secret``, signing through securemail-sop) makes a signature the peer verifies;
* ``test_their_pgp_mime_read_here[gosop->ours-ed25519]``: the peer signs and encrypts
  an inner MIME entity built here, ``read`` shows it decrypted, validly signed by it;
* ``test_our_send_decrypted_there[ours-ed25519->pgpainless]``: ``send --output``
  to the peer's key, the peer decrypts and names our fingerprint;
* ``test_read_refuses_message_for_someone_else[sqop]``: exit 1, no plaintext.

Our keys and the peers' keys are made once per module (pgpainless is a slow JVM).
gosop decrypts binary literal data as text (QUIRK_DECRYPT_AS_TEXT): its CRLFs come
back as LF, so what it decrypts of ours is checked after that exact change.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli

from .mailhelpers import (ATTACHMENT, Content, encrypted_part, inner_entity, parse_entity,
                          wrap_pgp_mime)
from .peers import PEERS, QUIRK_DECRYPT_AS_TEXT, SopPeer, available_peers, fingerprint, make_peer

ROOT = Path(__file__).resolve().parents[2]
OUR_ALGOS = ("ed25519", "rsa3072")
BODY = "Bonjour,\nla réunion est avancée à 9 h.\n\nFrom the minister's office\n.\nFin.\n"


def _algos(name: str) -> tuple[str, ...]:
    peer = make_peer(name)  # no process is started: only the declared algorithms are read
    try:
        return peer.key_algos
    finally:
        peer.close()


THEIR_KEYS = [pytest.param(n, a, id=f"{n}-{a}->here") for n in PEERS for a in _algos(n)]
OURS_TO_PEER = [pytest.param(a, n, id=f"ours-{a}->{n}") for a in OUR_ALGOS for n in PEERS]
PEER_TO_OURS = [pytest.param(n, a, o, id=f"{n}{'' if a == _algos(n)[0] else '-' + a}->ours-{o}")
                for n in PEERS for a in _algos(n) for o in OUR_ALGOS]
ALL_PEERS = [pytest.param(n, id=n) for n in PEERS]


@dataclass(frozen=True)
class Ours:
    """One of our keys: its address, fingerprint, exported certificate and secret key."""
    algo: str
    address: str
    fpr: str
    cert: bytes
    key: bytes


class Here:
    """A securemail home holding our two keys and the peers' certificates it was shown."""

    def __init__(self, home: Path) -> None:
        self.home, self.keys, self._known = home, {}, set()

    def cli(self, *args: str, input: bytes | None = None, ok: bool = True):
        result = run_cli(self.home, *args, input=input)
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    def generate(self, algo: str) -> Ours:
        address = f"{algo}@securemail.example"
        out = self.cli("keys", "generate", "--uid", f"Interop {algo} <{address}>",
                       "--algorithm", algo, "--no-passphrase")
        fpr = out.stdout.strip().upper()
        cert = self.cli("keys", "export", fpr).stdout_bytes
        key = self.cli("keys", "export", fpr, "--secret").stdout_bytes
        assert fingerprint(cert) == fpr and b"PRIVATE" not in cert
        return Ours(algo, address, fpr, cert, key)

    def know(self, ident) -> None:
        """Import a peer identity's certificate, once."""
        if ident.fpr not in self._known:
            self.cli("keys", "import", "-", input=ident.cert)
            self._known.add(ident.fpr)

    def read(self, eml: bytes, path: Path) -> tuple[int, dict, str]:
        """``read PATH --json``: exit code, the one message's object, all stdout."""
        path.write_bytes(eml)
        result = self.cli("read", str(path), "--json", ok=False)
        assert result.exit_code in (0, 1), (result.exit_code, result.stdout, result.stderr)
        [obj] = json.loads(result.stdout)
        return result.exit_code, obj, result.stdout


@pytest.fixture(scope="module")
def here(tmp_path_factory) -> Here:
    h = Here(tmp_path_factory.mktemp("interop-mail") / "home")
    for algo in OUR_ALGOS:
        h.keys[algo] = h.generate(algo)
    return h


@pytest.fixture(scope="module")
def our_signatures(here) -> dict[str, tuple[bytes, bytes]]:
    """Per algorithm (data, detached signature) made by securemail-sop (our core) with our key."""
    ours = SopPeer("securemail-sop", [sys.executable, "-m", "cli.sop"], key_algos=("default",),
                   env={"PYTHONPATH": str(ROOT)})
    with ours:
        made = {}
        for algo, me in here.keys.items():
            data = inner_entity(content_for(me.address, "peer@interop.example", "signed"))
            made[algo] = data, ours.sign(data, [me.key])
    return made


def names_signer(verifications: list[str], fpr: str) -> bool:
    """One SOP verification line names ``fpr`` as the primary key."""
    return any(len(v.split()) >= 3 and v.split()[2] == fpr for v in verifications)


def content_for(sender: str, to: str, tag: str) -> Content:
    return Content(sender, to, f"Interop – réunion {tag}", BODY, (f"ordre-{tag}.bin", ATTACHMENT))


def assert_read_as(obj: dict, c: Content, signature: str, signer: str | None) -> None:
    assert obj["error"] is None, obj
    assert (obj["encrypted"], obj["decrypted"], obj["format"]) == (True, True, "pgp/mime"), obj
    assert (obj["signature"], obj["signer"]) == (signature, signer), obj
    assert obj["subject"] == c.subject  # the protected one, not the outer "..."
    assert c.sender in obj["from"]
    assert obj["body"].replace("\r\n", "\n").rstrip("\n") == c.body.rstrip("\n")
    assert obj["attachments"] == [{"name": c.attachment[0], "size": len(c.attachment[1])}]


# 1. Their keys imported here.

@pytest.mark.parametrize("name,algo", THEIR_KEYS)
def test_their_key_imports_here(name, algo, peer_pool, tmp_path):
    them = peer_pool.identity(name, algo)
    home = tmp_path / "home"
    out = run_cli(home, "keys", "import", "-", input=them.cert)
    assert out.exit_code == 0, (out.stdout, out.stderr)
    [line] = out.stdout.splitlines()
    assert line.startswith(f"new {them.fpr} ") and line.endswith("[valid]"), line
    listed = run_cli(home, "keys", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    [row] = [r for r in json.loads(listed.stdout) if r["fingerprint"] == them.fpr]
    assert (row["state"], row["can_encrypt"], row["secret"]) == ("valid", True, False), row
    assert f"{name}-{algo}@interop.example" in row["addresses"]


# 2. Our keys imported there: encrypted to, and our signatures verified.

@pytest.mark.parametrize("algo,name", OURS_TO_PEER)
def test_peer_encrypts_to_our_key(algo, name, peer_pool, here, tmp_path):
    peer, me = peer_pool.get(name), here.keys[algo]
    c = content_for(f"{name}@interop.example", me.address, f"{name}-unsigned")
    armored = peer.encrypt(inner_entity(c), [me.cert])
    code, obj, _ = here.read(wrap_pgp_mime(c.sender, c.to, armored), tmp_path / "in.eml")
    assert code == 0
    assert_read_as(obj, c, "none", None)


@pytest.mark.parametrize("algo,name", OURS_TO_PEER)
def test_peer_verifies_our_signature(algo, name, peer_pool, here, our_signatures):
    me, (data, signature) = here.keys[algo], our_signatures[algo]
    verifications = peer_pool.get(name).verify(data, signature, [me.cert])
    assert names_signer(verifications, me.fpr), (verifications, me.fpr)


# 3. Their encrypted and signed PGP/MIME read here.

@pytest.mark.parametrize("name,their_algo,algo", PEER_TO_OURS)
def test_their_pgp_mime_read_here(name, their_algo, algo, peer_pool, here, tmp_path):
    peer, them, me = peer_pool.get(name), peer_pool.identity(name, their_algo), here.keys[algo]
    here.know(them)
    c = content_for(f"{name}-{their_algo}@interop.example", me.address, name)
    armored = peer.encrypt(inner_entity(c), [me.cert], signers=[them.key], as_binary_literal=True)
    code, obj, _ = here.read(wrap_pgp_mime(c.sender, c.to, armored), tmp_path / "in.eml")
    assert code == 0
    assert_read_as(obj, c, "valid", them.fpr)


# 4. Ours decrypted and verified there.

@pytest.mark.parametrize("algo,name", OURS_TO_PEER)
def test_our_send_decrypted_there(algo, name, peer_pool, here, tmp_path):
    peer, them, me = peer_pool.get(name), peer_pool.identity(name), here.keys[algo]
    here.know(them)
    c = content_for(me.address, them.uid.rpartition("<")[2].rstrip(">"), f"{algo}-to-{name}")
    (tmp_path / "body.txt").write_text(c.body, encoding="utf-8")
    (tmp_path / c.attachment[0]).write_bytes(c.attachment[1])
    here.cli("send", "--from", c.sender, "--to", c.to, "--subject", c.subject,
             "--body-file", str(tmp_path / "body.txt"), "--attach", str(tmp_path / c.attachment[0]),
             "--output", str(tmp_path / "out.eml"))
    eml = (tmp_path / "out.eml").read_bytes()
    outer, armored = encrypted_part(eml)
    assert outer["subject"] == "..." and c.subject.encode() not in eml

    out = peer.decrypt(armored, [them.key], verify_certs=[me.cert])
    assert names_signer(out.verifications, me.fpr), (out.verifications, me.fpr)
    plaintext = out.plaintext
    if QUIRK_DECRYPT_AS_TEXT in peer.quirks:  # every CRLF came back as LF, nothing else changed
        assert b"\r" not in plaintext, f"{name} kept CR: quirk gone, update peers.py"
    else:
        assert b"\n" not in plaintext.replace(b"\r\n", b""), "bare LF: CRLF not kept byte for byte"
    inner, text, files = parse_entity(plaintext)
    assert inner["subject"] == c.subject and inner["from"] == c.sender and inner["to"] == c.to
    assert inner.get_param("hp") == "cipher"
    assert text.replace("\r\n", "\n").rstrip("\n") == c.body.rstrip("\n")
    assert files == [c.attachment]


# 5. A message for someone else is refused, its content never shown.

@pytest.mark.parametrize("name", ALL_PEERS)
def test_read_refuses_message_for_someone_else(name, peer_pool, here, tmp_path):
    peer, them = peer_pool.get(name), peer_pool.identity(name)
    here.know(them)
    stranger = peer_pool.identity("sqop" if "sqop" in available_peers() else name, tag="stranger")
    c = content_for(f"{name}@interop.example", "stranger@interop.example", f"{name}-stranger")
    armored = peer.encrypt(inner_entity(c), [stranger.cert], signers=[them.key])
    code, obj, stdout = here.read(wrap_pgp_mime(c.sender, c.to, armored), tmp_path / "in.eml")
    assert code == 1
    assert obj["error"], obj
    assert (obj["encrypted"], obj["decrypted"], obj["body"], obj["attachments"]) == \
        (True, False, "", []), obj
    assert "réunion" not in stdout and "minister" not in stdout
