"""The interop corpus, regenerated from the Debian peers: ``python -m tests.support.corpus OUTDIR``.

The shared corpus (``../shared/corpus``, see its README) is mail written by GnuPG and sqop to
alice@interieur.gouv.fr with a manifest of what a reader and a gateway must conclude. It lives
outside this repository, so a fresh clone would skip every test that reads it. This script writes
an equivalent corpus with the same file names, key names and manifest shape, made fresh each time
by gpg (a temporary GNUPGHOME) and sqop: new keys (alice, bruno and denis with gpg, carole with
sqop, emma with gpg and then revoked), then one message per category of the shared manifest. No
securemail code makes what the tests read.

``locate()`` says which corpus the tests use: ../shared/corpus when present (first choice), or
none, so that the ``corpus`` fixture generates one; ``SECUREMAIL_CORPUS=generate`` forces that.
Every category of the shared manifest can be made by the peers (gpg 2.2 still writes SED without
MDC under ``--rfc2440`` with an explicit cipher), so none is left out.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path

from tests.interop.peers import dearmor, fingerprint, make_peer
from tests.support.commands import REPO

SHARED = REPO.parent / "shared" / "corpus"
PEERS = ("gpg", "sqop")
TIMEOUT = 120
BOMB = 256 << 20  # bytes of plaintext behind the compression bomb, over 500:1
ABOUT = ("expect: show = decrypt and display; refuse = no plaintext shown, clear error; plaintext = not "
         "encrypted, never presented as encrypted. gateway: accept/reject when this mail crosses between "
         "two member domains; signature: valid/invalid/none as a reader must report.")

# name: display name, address, who makes the key, its role, gpg's primary and subkey algorithms
PEOPLE = {
    "alice": ("Alice Martin", "alice@interieur.gouv.fr", "gpg", "reader", ("ed25519", "cv25519")),
    "bruno": ("Bruno Petit", "bruno@justice.gouv.fr", "gpg", "peer", ("rsa3072", "rsa3072")),
    "carole": ("Carole Vert", "carole@armees.gouv.fr", "sqop", "peer", None),
    "denis": ("Denis Blanc", "denis@sante.gouv.fr", "gpg", "stranger", ("ed25519", "cv25519")),
    "emma": ("Emma Noir", "emma@culture.gouv.fr", "gpg", "revoked", ("ed25519", "cv25519")),
}

# The same files as the shared manifest, in its order: tests parametrize on them at collection.
FILES = tuple(f"mail/{n}.eml" for n in (
    "gpg-0-encrypted-signed", "sqop-1-encrypted-signed", "encrypted-unsigned", "large-1mib",
    "encrypted-to-other", "signed-by-revoked-key", "tampered", "no-mdc", "fake-encrypted",
    "compression-bomb", "signed-not-encrypted", "plain", "inline-pgp"))


def locate() -> Path | None:
    """The shared corpus directory, unless it is absent or SECUREMAIL_CORPUS=generate."""
    if os.environ.get("SECUREMAIL_CORPUS") == "generate" or not (SHARED / "manifest.json").exists():
        return None
    return SHARED


def case_files() -> list[str]:
    """The mail files the ``corpus`` fixture will list, known at collection time."""
    where = locate()
    if where is None:
        return list(FILES)
    return [m["file"] for m in json.loads((where / "manifest.json").read_text())["mail"]]


def missing_peers() -> list[str]:
    return [p for p in PEERS if shutil.which(p) is None]


# --- gpg in one temporary GNUPGHOME ----------------------------------------------------------------
class Gpg:
    """GnuPG with a throw-away home: every key it makes or imports, unprotected, trusted."""

    BASE = ["--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "",
            "--trust-model", "always", "--no-auto-key-locate"]

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="smc-"))  # short: gpg-agent's socket lives here
        self.home.chmod(0o700)

    def run(self, *args: str, stdin: bytes = b"") -> bytes:
        p = subprocess.run(["gpg", *self.BASE, "--status-fd", "2", *args], input=stdin,
                           capture_output=True, timeout=TIMEOUT, env={**os.environ, "GNUPGHOME": str(self.home)})
        if p.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} exited {p.returncode}: {p.stderr.decode()[-800:]}")
        self.status = p.stderr.decode("utf-8", "replace")
        return p.stdout

    def new_key(self, uid: str, primary: str, sub: str) -> str:
        self.run("--quick-gen-key", uid, primary, "sign,cert", "2y")
        fpr = next(x.split()[-1] for x in self.status.splitlines() if "KEY_CREATED" in x)
        self.run("--quick-add-key", fpr, sub, "encr", "2y")
        return fpr

    def revoke(self, fpr: str) -> None:
        """Import the revocation gpg wrote when it made the key (its armor line is escaped by ':')."""
        rev = (self.home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
        self.run("--import", stdin=rev.replace(b"\n:-----BEGIN", b"\n-----BEGIN"))

    def encrypt(self, data: bytes, to: list[str], signer: str | None = None, *extra: str) -> bytes:
        args = ["--encrypt", "--armor", *extra, *[x for f in to for x in ("--recipient", f)]]
        if signer:
            args += ["--sign", "--local-user", signer]
        return self.run(*args, stdin=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, timeout=TIMEOUT, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


# --- the mail: inner entities, PGP/MIME, tampering ---------------------------------------------------
def addr(who: str) -> str:
    return formataddr(PEOPLE[who][:2])


def inner(who: str, subject: str, body: str, attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """The entity a client encrypts: protected headers (v1), a text body, attachments; CRLF."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = addr(who), addr("alice"), subject
    m.set_content(body)
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    m.set_param("protected-headers", "v1")
    return m.as_bytes(policy=policy.SMTP)


def outer(who: str, subject: str = "...") -> EmailMessage:
    m = EmailMessage(policy=policy.SMTP)
    m["From"], m["To"], m["Subject"] = addr(who), addr("alice"), subject
    m["Date"] = "Fri, 20 Nov 2026 09:30:00 +0000"
    m["Message-ID"] = make_msgid(domain=PEOPLE[who][1].split("@")[1])
    return m


def header_block(m: EmailMessage) -> bytes:
    """The headers of ``m`` and the blank line after them (the generator would add its own body)."""
    data = m.as_bytes()
    return data[:data.index(b"\r\n\r\n") + 4]


def pgp_mime(who: str, armored: bytes) -> bytes:
    """RFC 3156 multipart/encrypted around ``armored``, the real Subject hidden; CRLF."""
    boundary = f"enc-{secrets.token_hex(8)}"
    head = outer(who)
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = f'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="{boundary}"'
    parts = [f"--{boundary}", "Content-Type: application/pgp-encrypted", "Content-Transfer-Encoding: 7bit", "",
             "Version: 1", "", f"--{boundary}", "Content-Type: application/octet-stream",
             "Content-Transfer-Encoding: 7bit", 'Content-Disposition: inline; filename="encrypted.asc"', "",
             *armored.decode().strip().splitlines(), "", f"--{boundary}--", ""]
    return header_block(head) + "\r\n".join(parts).encode()


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc = (crc << 1) ^ (0x1864CFB if crc & 0x800000 else 0)
    return crc & 0xFFFFFF


def armor(binary: bytes) -> bytes:
    b64 = base64.b64encode(binary).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    crc = base64.b64encode(crc24(binary).to_bytes(3, "big")).decode()
    return "\n".join(["-----BEGIN PGP MESSAGE-----", "", *lines, f"={crc}", "-----END PGP MESSAGE-----", ""]).encode()


def tamper(armored: bytes) -> bytes:
    """One bit flipped early in the encrypted data packet's ciphertext, the packet framing intact."""
    data, pos = bytearray(dearmor(armored)), 0
    while True:
        ctb = data[pos]
        new, tag = bool(ctb & 0x40), (ctb & 0x3F if ctb & 0x40 else (ctb >> 2) & 0x0F)
        if new:
            o = data[pos + 1]
            hlen, n = (2, o) if o < 192 else (3, ((o - 192) << 8) + data[pos + 2] + 192) if o < 224 \
                else (6, int.from_bytes(data[pos + 2:pos + 6], "big")) if o == 255 else (2, 1 << (o & 0x1F))
        else:
            size = (1, 2, 4, 0)[ctb & 3]
            hlen, n = 1 + size, int.from_bytes(data[pos + 1:pos + 1 + size], "big")
        if tag in (9, 18):
            data[pos + hlen + min(100, n // 2)] ^= 0x10
            return armor(bytes(data))
        pos += hlen + n


def signed_only(g: Gpg, who: str, fpr: str, text: str) -> bytes:
    """RFC 3156 multipart/signed: a text part and gpg's detached signature over its CRLF form."""
    boundary = f"sig-{secrets.token_hex(8)}"
    part = ("Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            f"{text}\r\n").encode()
    sig = g.run("--detach-sign", "--armor", "--digest-algo", "SHA256", "--local-user", fpr, stdin=part)
    head = outer(who, "Signe seulement")
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = (f'multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256; '
                            f'boundary="{boundary}"')
    return (header_block(head) + f"--{boundary}\r\n".encode() + part + f"\r\n--{boundary}\r\n".encode()
            + b'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n'
            + sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + f"\r\n--{boundary}--\r\n".encode())


def plain(who: str, subject: str, text: str, subtype: str = "plain") -> bytes:
    m = outer(who, subject)
    m.set_content(text, subtype=subtype, cte="7bit")
    return m.as_bytes()


# --- the corpus ----------------------------------------------------------------------------------------
@dataclass
class Peers:
    """The two peers, the keys they made (fingerprints by name) and carole's secret key (sqop's)."""
    gpg: Gpg
    sqop: object
    fpr: dict[str, str]
    carole_key: bytes = b""

    def entry(self, file: str, who: str, made_by: str, **fields) -> dict:
        return {"file": f"mail/{file}.eml", **fields, "sender": PEOPLE[who][1], "made_by": made_by}


def make_keys(g: Gpg, sqop) -> Peers:
    p = Peers(g, sqop, {})
    for name, (display, address, maker, _, algos) in PEOPLE.items():
        uid = f"{display} <{address}>"
        if maker == "gpg":
            p.fpr[name] = g.new_key(uid, *algos)
        else:
            p.carole_key = sqop.generate_key(uid)
            p.fpr[name] = fingerprint(sqop.extract_cert(p.carole_key))
    return p


def shown(p: Peers) -> list[tuple[dict, bytes]]:
    """Mail a reader decrypts and shows, with its signature status."""
    g, alice, bruno = p.gpg, p.fpr["alice"], p.fpr["bruno"]
    pdf = (b"%PDF-1.4\r\n" + secrets.token_bytes(4096),)
    out = []
    for i, who in enumerate(("bruno", "carole")):
        maker = PEOPLE[who][2]
        entity = inner(who, f"Reunion {maker} {i}", "Note confidentielle.\nLa reunion interministerielle est "
                       f"avancee a 8h30.\nMerci de ne pas diffuser.\nReference: visible-{maker}-{i}\n",
                       (("ordre-du-jour.pdf", pdf[0]),))
        if maker == "gpg":
            armored = g.encrypt(entity, [alice, bruno], bruno)
        else:
            cert = g.run("--export", "--armor", alice)
            armored = p.sqop.encrypt(entity, [cert, p.sqop.extract_cert(p.carole_key)], [p.carole_key])
        out.append((p.entry(f"{maker}-{i}-encrypted-signed", who, maker, expect="show", gateway="accept",
                            encrypted=True, decryptable=True, signature="valid", signer=p.fpr[who],
                            subject=f"Reunion {maker} {i}", body_contains=f"Reference: visible-{maker}-{i}",
                            attachments=["ordre-du-jour.pdf"]), pgp_mime(who, armored)))
    entity = inner("bruno", "Sans signature", "Ce message est chiffre non signe.\n")
    out.append((p.entry("encrypted-unsigned", "bruno", "gpg", expect="show", gateway="accept", encrypted=True,
                        decryptable=True, signature="none", subject="Sans signature",
                        body_contains="chiffre non signe"), pgp_mime("bruno", g.encrypt(entity, [alice, bruno]))))
    entity = inner("bruno", "Gros fichier", "Voir l'annexe.\n", (("annexe.bin", secrets.token_bytes(1 << 20)),))
    out.append((p.entry("large-1mib", "bruno", "gpg", expect="show", gateway="accept", encrypted=True,
                        decryptable=True, signature="valid", signer=bruno, subject="Gros fichier",
                        attachments=["annexe.bin"]), pgp_mime("bruno", g.encrypt(entity, [alice, bruno], bruno))))
    return out


def refused(p: Peers) -> list[tuple[dict, bytes]]:
    """Mail a reader must refuse (or report as badly signed), and emma's, signed before her revocation."""
    g, alice, bruno = p.gpg, p.fpr["alice"], p.fpr["bruno"]
    other = inner("bruno", "Pour Denis", "Secret. Pour Denis seulement.\n")
    revoked = inner("emma", "Cle revoquee", "Signe par une cle revoquee.\n")
    altered = inner("bruno", "Altere", "Ce message sera altere en route.\n")
    no_mdc = inner("bruno", "Sans MDC", "Message sans protection d'integrite.\n")
    return [
        (p.entry("encrypted-to-other", "bruno", "gpg", must_not_show="Secret.", expect="refuse", gateway="accept",
                 encrypted=True, decryptable=False, reason="not encrypted to the reader's key"),
         pgp_mime("bruno", g.encrypt(other, [p.fpr["denis"]], bruno))),
        (p.entry("signed-by-revoked-key", "emma", "gpg", expect="show", gateway="accept", encrypted=True,
                 decryptable=True, signature="invalid", reason="signer key is revoked (revocation in keys/)"),
         pgp_mime("emma", g.encrypt(revoked, [alice], p.fpr["emma"]))),
        (p.entry("tampered", "bruno", "gpg", must_not_show="sera altere", expect="refuse", gateway="accept",
                 encrypted=True, decryptable=False, reason="integrity check fails; no plaintext may be shown"),
         pgp_mime("bruno", tamper(g.encrypt(altered, [alice], bruno)))),
        (p.entry("no-mdc", "bruno", "gpg --rfc2440", must_not_show="sans protection d'integrite", expect="refuse",
                 gateway="reject", encrypted=True, decryptable=False,
                 reason="symmetrically encrypted data without MDC (EFAIL); must be refused"),
         pgp_mime("bruno", g.encrypt(no_mdc, [alice], None, "--rfc2440", "--cipher-algo", "AES256"))),
    ]


def bomb(p: Peers, scratch: Path) -> tuple[dict, bytes]:
    """256 MiB of zeros behind a few hundred KiB: gpg -z 9 reads a sparse file, never memory."""
    path = scratch / "bomb"
    with path.open("wb") as f:
        f.write(b"Content-Type: text/plain\r\n\r\n")
        f.truncate(BOMB)
    armored = p.gpg.run("--encrypt", "--armor", "-z", "9", "--compress-algo", "zlib", "--recipient",
                        p.fpr["alice"], "--output", "-", str(path))
    path.unlink()
    return (p.entry("compression-bomb", "bruno", "gpg -z 9", expect="refuse", gateway="accept", encrypted=True,
                    decryptable=True, reason=f"decompresses to 256 MiB from {len(armored) >> 10} KiB (over 500:1); "
                    "must stop at a limit, memory bounded"), pgp_mime("bruno", armored))


def in_clear(p: Peers) -> list[tuple[dict, bytes]]:
    """Mail that is not encrypted, one of them disguised as if it were, and inline PGP."""
    g, bruno = p.gpg, p.fpr["bruno"]
    literal = g.run("--store", "--armor", stdin=b"Ceci n'est pas chiffre.\r\n")
    inline = g.encrypt(b"Ce message est chiffre en ligne.\r\n", [p.fpr["alice"], bruno], bruno)
    return [
        (p.entry("fake-encrypted", "bruno", "gpg --store", expect="plaintext", gateway="reject", encrypted=False,
                 decryptable=False, reason="multipart/encrypted holding a literal data packet: plaintext in disguise"),
         pgp_mime("bruno", literal)),
        (p.entry("signed-not-encrypted", "bruno", "gpg", expect="plaintext", gateway="reject", encrypted=False,
                 decryptable=False, signature="valid", reason="plaintext (signed only)"),
         signed_only(g, "bruno", bruno, "Signe mais en clair.")),
        (p.entry("plain", "bruno", "python", expect="plaintext", gateway="reject", encrypted=False,
                 decryptable=False, reason="plaintext"), plain("bruno", "En clair", "Ce message est en clair.\n")),
        (p.entry("inline-pgp", "bruno", "gpg", expect="show", gateway="either", encrypted=True, decryptable=True,
                 format="inline", signature="valid", signer=bruno, body_contains="chiffre en ligne"),
         plain("bruno", "...", inline.decode())),
    ]


def write_keys(p: Peers, keys: Path) -> dict:
    """Every public key (emma's with her revocation) and alice's unprotected secret key."""
    keys.mkdir(parents=True, exist_ok=True)
    p.gpg.revoke(p.fpr["emma"])
    out = {}
    for name, (_, address, maker, role, _) in PEOPLE.items():
        cert = p.sqop.extract_cert(p.carole_key) if maker == "sqop" else p.gpg.run("--export", "--armor", p.fpr[name])
        (keys / f"{name}.pub.asc").write_bytes(cert)
        out[name] = {"address": address, "fingerprint": p.fpr[name], "made_by": maker, "role": role}
    (keys / "alice.sec.asc").write_bytes(p.gpg.run("--export-secret-keys", "--armor", p.fpr["alice"]))
    return out


def generate(outdir: Path) -> dict:
    """Write keys/, mail/ and manifest.json into ``outdir``; return the manifest."""
    outdir = Path(outdir)
    (outdir / "mail").mkdir(parents=True, exist_ok=True)
    g, sqop = Gpg(), make_peer("sqop")
    try:
        p = make_keys(g, sqop)
        made = [*shown(p), *refused(p), bomb(p, g.home), *in_clear(p)]
        keys = write_keys(p, outdir / "keys")
    finally:
        g.close()
        sqop.close()
    made.sort(key=lambda m: FILES.index(m[0]["file"]))
    for entry, data in made:
        (outdir / entry["file"]).write_bytes(data)
    manifest = {"about": ABOUT, "reader": PEOPLE["alice"][1], "reader_secret_key": "keys/alice.sec.asc",
                "generated_by": "tests/support/corpus.py", "keys": keys, "mail": [e for e, _ in made]}
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.support.corpus OUTDIR", file=sys.stderr)
        return 2
    if missing_peers():
        print(f"missing: {', '.join(missing_peers())} (apt-get install gpg sqop)", file=sys.stderr)
        return 1
    manifest = generate(Path(argv[0]))
    print(f"{len(manifest['mail'])} messages and {len(manifest['keys'])} keys in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
