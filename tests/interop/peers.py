"""Drive other OpenPGP implementations (gpg and SOP tools) from tests: bytes in, bytes out.

Every peer has the same methods. Keys, certificates, messages and signatures are
bytes, armored unless ``armor=False``. A SOP peer is stateless and gets keys as
files in a per-call temporary directory. GpgPeer keeps one temporary GNUPGHOME
(mode 0700) per set of secret keys, so gpg too can only decrypt and sign with
the keys it was handed; verifications are limited to the certificates passed.

A verification is a SOP-style line for every peer (gpg's are built from its
status lines): ``<ISO-8601 UTC time> <signing key fpr> <primary key fpr>``.

Found by running the Debian builds (gpg 2.2.40, sqop 0.27.3, gosop
0~git20221115, pgpainless-cli 1.3.16). ``key_algos`` is what generate_key makes,
the first being "default"; none of the SOP tools has --profile, so each makes one:

* gpg: ed25519 (ed25519 [SC] + cv25519 [E]), rsa3072 ([SC] + [E]); no expiry.
  Exits 2 for nearly every failure; ``PeerFailure.sop_code`` says 29 (cannot
  decrypt) or 3 (no acceptable signature) as a SOP tool would.
* sqop: ed25519 (ed25519 [C] + ed25519 [S] + cv25519 [E], expires in 3 years).
  Will not overwrite an output file (exit 59).
* gosop: rsa2048 (rsa2048 [SC] + rsa2048 [E]). No inline-sign/inline-verify
  (exit 69, raised as Unsupported). See the ``QUIRK_*`` constants.
* pgpainless: ed25519 (ed25519 [C] + cv25519 [E] + ed25519 [S]). A JVM, about
  0.5-1 s per call: most of the interop tests' time.

All three SOP tools fail decrypt --verify-with when no signature verifies and
withhold the plaintext; GpgPeer does the same.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import unittest
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

TIMEOUT = 60.0

# gosop decrypt treats even binary ('b') literal data as text: CRLF becomes LF and each
# run of bytes that is not UTF-8 becomes one U+FFFD. Not binary-safe.
QUIRK_DECRYPT_AS_TEXT = "decrypt-as-text"
# gosop names the primary key fpr as the signing key, even for a subkey signature.
QUIRK_SIGNER_IS_PRIMARY = "signer-fpr-is-primary"
# gosop exits 99 where SOP says 29 (cannot decrypt) or 3 (decrypt --verify-with, no good signature).
QUIRK_EXIT_99 = "exit-99"
# pgpainless clear-signs LF text with a stray "\r\n" line before the signature, so gpg and
# sqop hand back the text with a trailing "\r\n" (the signature still verifies).
QUIRK_CLEARSIGN_STRAY_CR = "clearsign-stray-cr"


class PeerError(Exception):
    """Root of the harness's errors."""


class PeerFailure(PeerError):
    """The peer ran and failed: its exit code, its stderr, and the SOP exit code that means."""

    def __init__(self, peer: str, op: str, returncode: int, stderr: bytes,
                 sop_code: int | None = None) -> None:
        self.peer, self.op, self.returncode, self.stderr = peer, op, returncode, stderr
        self.sop_code = returncode if sop_code is None else sop_code
        tail = stderr.decode("utf-8", "replace").strip()[-800:]
        super().__init__(f"{peer} {op} exited {returncode} (sop {self.sop_code}): {tail}")


class Unsupported(PeerError, unittest.SkipTest):
    """The peer cannot do this; raised inside a pytest test it counts as a skip."""


@dataclass(frozen=True)
class DecryptOut:
    plaintext: bytes
    verifications: list[str] = field(default_factory=list)


def dearmor(data: bytes) -> bytes:
    """The binary form of ``data`` (the first armored block, or ``data`` itself)."""
    if not data.lstrip().startswith(b"-----BEGIN PGP "):
        return data
    body = []
    for line in data.strip().splitlines()[1:]:
        line = line.strip()
        if line.startswith(b"-----END"):
            break
        if b":" not in line and not line.startswith(b"="):  # skip headers and the CRC
            body.append(line)
    return base64.b64decode(b"".join(body))


def primary_key_packet(cert: bytes) -> bytes:
    """The body of the first packet of ``cert``, which must be a public key packet."""
    data = dearmor(cert)
    ctb = data[0]
    if ctb & 0x40:
        tag, o = ctb & 0x3F, data[1]
        if o < 192:
            n, pos = o, 2
        elif o < 224:
            n, pos = ((o - 192) << 8) + data[2] + 192, 3
        else:
            n, pos = int.from_bytes(data[2:6], "big"), 6
    else:
        tag, size = (ctb >> 2) & 0x0F, (1, 2, 4, 0)[ctb & 3]
        n, pos = int.from_bytes(data[1:1 + size], "big"), 1 + size
    if tag != 6:
        raise ValueError("not an OpenPGP certificate")
    return data[pos:pos + n]


def fingerprint(cert: bytes) -> str:
    """The v4 primary key fingerprint (upper-case hex) of the first certificate in ``cert``."""
    body = primary_key_packet(cert)
    if body[:1] != b"\x04":
        raise ValueError("not a v4 OpenPGP certificate")
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()


def _write(d: str, stem: str, blobs: Sequence[bytes]) -> list[str]:
    """Write each blob to a file in ``d``; return the paths, for a SOP tool's arguments."""
    for i, blob in enumerate(blobs):
        Path(d, f"{stem}{i}").write_bytes(blob)
    return [str(Path(d, f"{stem}{i}")) for i in range(len(blobs))]


def _no_armor(armor: bool) -> list[str]:
    return [] if armor else ["--no-armor"]


def _armor(armor: bool) -> list[str]:
    return ["--armor"] if armor else []


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


class Peer:
    """One OpenPGP implementation; each method raises Unsupported unless overridden."""

    name = "peer"
    key_algos: tuple[str, ...] = ()  # generate_key's algorithms; the first is "default"
    quirks: frozenset[str] = frozenset()

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self._tmp: Path | None = None

    @property
    def tmp(self) -> Path:
        if self._tmp is None:  # short path: gpg-agent sockets live in GNUPGHOME
            self._tmp = Path(tempfile.mkdtemp(prefix=f"sm-{self.name}-"))
        return self._tmp

    def scratch(self) -> tempfile.TemporaryDirectory:
        return tempfile.TemporaryDirectory(dir=self.tmp)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, op: str, argv: list[str], stdin: bytes = b"",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT,
                                  env=env or self.env, check=False)
        except subprocess.TimeoutExpired:
            raise PeerFailure(self.name, op, -1, b"timed out", sop_code=1) from None

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"{self.name} does not support {what}")

    def _algo(self, algo: str) -> str:
        """``algo`` with "default" resolved; Unsupported unless the peer can make it."""
        algo = self.key_algos[0] if algo == "default" and self.key_algos else algo
        if algo not in self.key_algos:
            raise self._unsupported(f"key algorithm {algo!r} (has {', '.join(self.key_algos)})")
        return algo

    def generate_key(self, uid: str, algo: str = "default", armor: bool = True) -> bytes:
        raise self._unsupported("generate-key")

    def extract_cert(self, key: bytes, armor: bool = True) -> bytes:
        raise self._unsupported("extract-cert")

    def encrypt(self, data: bytes, certs: Sequence[bytes], signers: Sequence[bytes] = (),
                as_binary_literal: bool = True, armor: bool = True) -> bytes:
        raise self._unsupported("encrypt")

    def decrypt(self, ciphertext: bytes, keys: Sequence[bytes],
                verify_certs: Sequence[bytes] = ()) -> DecryptOut:
        raise self._unsupported("decrypt")

    def sign(self, data: bytes, keys: Sequence[bytes], detached: bool = True,
             as_text: bool = False, armor: bool = True) -> bytes:
        raise self._unsupported("sign")

    def verify(self, data: bytes, sig: bytes, certs: Sequence[bytes]) -> list[str]:
        raise self._unsupported("verify")

    def inline_sign(self, data: bytes, keys: Sequence[bytes], mode: str = "binary",
                    armor: bool = True) -> bytes:
        raise self._unsupported("inline-sign")

    def inline_verify(self, data: bytes, certs: Sequence[bytes]) -> DecryptOut:
        raise self._unsupported("inline-verify")


class SopPeer(Peer):
    """A Stateless OpenPGP (SOP) command line tool such as sqop, gosop or pgpainless-cli."""

    def __init__(self, name: str, argv_prefix: Sequence[str], *,
                 key_algos: Sequence[str] = (), verify_out: str = "--verify-out",
                 quirks: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.name, self.argv_prefix = name, list(argv_prefix)
        self.key_algos, self.quirks = tuple(key_algos), frozenset(quirks)
        self.verify_out = verify_out  # sqop knows only --verifications-out, gosop only --verify-out

    def _sop(self, op: str, args: list[str], stdin: bytes = b"") -> bytes:
        p = self._exec(op, [*self.argv_prefix, op, *args], stdin)
        if p.returncode in (37, 69):  # unsupported option, unsupported subcommand
            raise Unsupported(f"{self.name} {op}: {p.stderr.decode('utf-8', 'replace').strip()}")
        if p.returncode != 0:
            raise PeerFailure(self.name, op, p.returncode, p.stderr)
        return p.stdout

    def generate_key(self, uid, algo="default", armor=True):
        self._algo(algo)  # no SOP tool here has --profile: only its default is on offer
        return self._sop("generate-key", [*_no_armor(armor), uid])

    def extract_cert(self, key, armor=True):
        return self._sop("extract-cert", _no_armor(armor), key)

    def encrypt(self, data, certs, signers=(), as_binary_literal=True, armor=True):
        with self.scratch() as d:
            args = [f"--as={'binary' if as_binary_literal else 'text'}", *_no_armor(armor)]
            args += [f"--sign-with={p}" for p in _write(d, "signer", signers)]
            return self._sop("encrypt", args + _write(d, "cert", certs), data)

    def decrypt(self, ciphertext, keys, verify_certs=()):
        with self.scratch() as d:
            out = Path(d, "verifications")  # must not exist yet: sqop will not overwrite (59)
            args = [f"{self.verify_out}={out}"] if verify_certs else []
            args += [f"--verify-with={p}" for p in _write(d, "cert", verify_certs)]
            plaintext = self._sop("decrypt", args + _write(d, "key", keys), ciphertext)
            return DecryptOut(plaintext, _lines(out))

    def sign(self, data, keys, detached=True, as_text=False, armor=True):
        if not detached:
            return self.inline_sign(data, keys, "text" if as_text else "binary", armor)
        with self.scratch() as d:
            args = [f"--as={'text' if as_text else 'binary'}", *_no_armor(armor)]
            return self._sop("sign", args + _write(d, "key", keys), data)

    def verify(self, data, sig, certs):
        with self.scratch() as d:
            args = _write(d, "sig", [sig]) + _write(d, "cert", certs)
            return [x for x in self._sop("verify", args, data).decode().splitlines() if x.strip()]

    def inline_sign(self, data, keys, mode="binary", armor=True):
        with self.scratch() as d:
            args = [f"--as={mode}", *_no_armor(armor)]
            return self._sop("inline-sign", args + _write(d, "key", keys), data)

    def inline_verify(self, data, certs):
        with self.scratch() as d:
            out = Path(d, "verifications")
            args = [f"--verifications-out={out}", *_write(d, "cert", certs)]
            return DecryptOut(self._sop("inline-verify", args, data), _lines(out))


class GpgPeer(Peer):
    """GnuPG, with one throw-away GNUPGHOME per set of secret keys it is given."""

    name = "gpg"
    key_algos = ("ed25519", "rsa3072")
    _ALGOS = {"ed25519": ("ed25519", "cv25519"), "rsa3072": ("rsa3072", "rsa3072")}
    _BASE = ["--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "",
             "--trust-model", "always", "--no-auto-key-locate"]

    def __init__(self, binary: str = "gpg", env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.binary = binary
        self._homes: dict[frozenset[str] | str, Path] = {}
        self._imported: dict[tuple[Path, str], list[str]] = {}

    def _gpg(self, op: str, home: Path, args: list[str], stdin: bytes = b"",
             check: bool = True) -> tuple[bytes, list[list[str]], subprocess.CompletedProcess]:
        with self.scratch() as d:
            status = Path(d, "status")
            argv = [self.binary, *self._BASE, "--status-file", str(status), *args]
            p = self._exec(op, argv, stdin, env={**self.env, "GNUPGHOME": str(home)})
            text = status.read_bytes().decode("utf-8", "replace") if status.exists() else ""
        st = [x[9:].split(" ") for x in text.splitlines() if x.startswith("[GNUPG:] ")]
        if check and p.returncode != 0:
            raise PeerFailure(self.name, op, p.returncode, p.stderr, sop_code=1)
        return p.stdout, st, p

    def _home(self, keys: Sequence[bytes] = (), name: str = "") -> Path:
        """The home holding exactly these secret keys (or the one called ``name``)."""
        ident = name or frozenset(hashlib.sha256(k).hexdigest() for k in keys)
        if ident not in self._homes:
            self._homes[ident] = Path(tempfile.mkdtemp(prefix="h", dir=self.tmp))
            self._homes[ident].chmod(0o700)
            self._fprs(self._homes[ident], keys)
        return self._homes[ident]

    def _import(self, home: Path, blob: bytes) -> list[str]:
        """Import ``blob`` into ``home`` (once); return its primary key fingerprints."""
        cache = (home, hashlib.sha256(blob).hexdigest())
        if cache not in self._imported:
            _, st, _ = self._gpg("import", home, ["--import"], blob)
            self._imported[cache] = list(dict.fromkeys(a[2] for a in st if a[0] == "IMPORT_OK"))
        return self._imported[cache]

    def _fprs(self, home: Path, blobs: Sequence[bytes]) -> list[str]:
        return [f for blob in blobs for f in self._import(home, blob)]

    @staticmethod
    def _verifications(st: list[list[str]], allowed: set[str]) -> list[str]:
        """SOP-style lines for each good signature (GOODSIG then VALIDSIG) by an allowed cert."""
        out, good = [], False
        for a in st:
            if a[0] in ("NEWSIG", "BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"):
                good = False
            elif a[0] == "GOODSIG":
                good = True
            elif a[0] == "VALIDSIG" and good and len(a) > 10 and a[10] in allowed:
                when = a[3]  # seconds since the epoch, or already ISO 8601
                if when.isdigit():
                    when = f"{datetime.fromtimestamp(int(when), timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
                out.append(f"{when} {a[1]} {a[10]}")
        return out

    def _checked(self, op: str, st, p, allowed: set[str]) -> list[str]:
        """The verifications; none is a failure, with SOP's exit code 3."""
        verifications = self._verifications(st, allowed)
        if not verifications:
            raise PeerFailure(self.name, op, p.returncode, p.stderr, sop_code=3)
        return verifications

    def _signer_args(self, home: Path, keys: Sequence[bytes]) -> list[str]:
        return [x for f in self._fprs(home, keys) for x in ("--local-user", f)]

    def generate_key(self, uid, algo="default", armor=True):
        primary, sub = self._ALGOS[self._algo(algo)]
        home = self._home(name="keygen")
        _, st, _ = self._gpg("quick-gen-key", home, ["--quick-gen-key", uid, primary,
                                                     "sign,cert", "never"])
        fpr = next(a[2] for a in st if a[0] == "KEY_CREATED")
        self._gpg("quick-add-key", home, ["--quick-add-key", fpr, sub, "encr", "never"])
        return self._gpg("export", home, ["--export-secret-keys", *_armor(armor), fpr])[0]

    def extract_cert(self, key, armor=True):
        home = self._home([key])
        return self._gpg("export", home, ["--export", *_armor(armor), *self._fprs(home, [key])])[0]

    def encrypt(self, data, certs, signers=(), as_binary_literal=True, armor=True):
        home = self._home(signers)
        args = ["--encrypt", *(["--sign"] if signers else []), *_armor(armor),
                *([] if as_binary_literal else ["--textmode"]), *self._signer_args(home, signers)]
        args += [x for f in self._fprs(home, certs) for x in ("--recipient", f)]
        return self._gpg("encrypt", home, args, data)[0]

    def decrypt(self, ciphertext, keys, verify_certs=()):
        home = self._home(keys)
        allowed = set(self._fprs(home, verify_certs))
        out, st, p = self._gpg("decrypt", home, ["--decrypt"], ciphertext, check=False)
        kws = {a[0] for a in st}
        if "DECRYPTION_OKAY" not in kws or "DECRYPTION_FAILED" in kws:
            failed = kws & {"NO_SECKEY", "DECRYPTION_FAILED"}
            raise PeerFailure(self.name, "decrypt", p.returncode, p.stderr,
                              sop_code=29 if failed else 1)
        if verify_certs:
            return DecryptOut(out, self._checked("decrypt", st, p, allowed))
        return DecryptOut(out, [])

    def sign(self, data, keys, detached=True, as_text=False, armor=True):
        home = self._home(keys)
        args = ["--detach-sign" if detached else "--sign", *_armor(armor),
                *(["--textmode"] if as_text else []), *self._signer_args(home, keys)]
        return self._gpg("sign", home, args, data)[0]

    def verify(self, data, sig, certs):
        home = self._home()
        allowed = set(self._fprs(home, certs))
        with self.scratch() as d:
            sigfile = _write(d, "sig", [sig])[0]
            _, st, p = self._gpg("verify", home, ["--verify", sigfile, "-"], data, check=False)
        return self._checked("verify", st, p, allowed)

    def inline_sign(self, data, keys, mode="binary", armor=True):
        modes = {"binary": ["--sign"], "text": ["--sign", "--textmode"],
                 "clearsigned": ["--clearsign"]}
        if mode not in modes:
            raise self._unsupported(f"inline-sign --as={mode}")
        home = self._home(keys)
        args = [*modes[mode], *_armor(armor), *self._signer_args(home, keys)]
        return self._gpg("inline-sign", home, args, data)[0]

    def inline_verify(self, data, certs):
        home = self._home()
        allowed = set(self._fprs(home, certs))
        out, st, p = self._gpg("inline-verify", home, ["--decrypt"], data, check=False)
        return DecryptOut(out, self._checked("inline-verify", st, p, allowed))

    def close(self):
        gpgconf = shutil.which("gpgconf")
        for home in self._homes.values():
            if gpgconf:  # stop the gpg-agent each home started
                subprocess.run([gpgconf, "--homedir", str(home), "--kill", "all"],
                               capture_output=True, timeout=TIMEOUT, check=False)
        self._homes.clear()
        self._imported.clear()
        super().close()


@dataclass(frozen=True)
class PeerSpec:
    binary: str
    apt_package: str
    make: Callable[[], Peer]


PEERS: dict[str, PeerSpec] = {
    "gpg": PeerSpec("gpg", "gpg", GpgPeer),
    "sqop": PeerSpec("sqop", "sqop", lambda: SopPeer(
        "sqop", ["sqop"], key_algos=("ed25519",), verify_out="--verifications-out")),
    "gosop": PeerSpec("gosop", "gosop", lambda: SopPeer(
        "gosop", ["gosop"], key_algos=("rsa2048",),
        quirks=(QUIRK_DECRYPT_AS_TEXT, QUIRK_SIGNER_IS_PRIMARY, QUIRK_EXIT_99))),
    # C1 JIT and serial GC cut the JVM's start by about a quarter.
    "pgpainless": PeerSpec("pgpainless-cli", "pgpainless-cli", lambda: SopPeer(
        "pgpainless", ["pgpainless-cli"], key_algos=("ed25519",),
        quirks=(QUIRK_CLEARSIGN_STRAY_CR,),
        env={"JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"})),
}


def available_peers() -> list[str]:
    """Names of the peers whose program is on PATH."""
    return [name for name, spec in PEERS.items() if shutil.which(spec.binary)]


def make_peer(name: str) -> Peer:
    """A new peer by name; close it (or use ``with``) to remove its temporary files."""
    return PEERS[name].make()
