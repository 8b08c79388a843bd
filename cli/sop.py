"""securemail-sop: the Stateless OpenPGP CLI (draft-dkg-openpgp-stateless-cli) on our crypto core.

A thin adapter: python-sop parses argv and reads indirect inputs (files, @ENV:,
@FD:); every OpenPGP decision is made by securemail.crypto. Supported: version,
list-profiles, generate-key (one USERID; profiles ed25519 = default, rfc4880 =
RSA-3072, rsa4096; --with-key-password), extract-cert, sign (--micalg-out),
verify, encrypt (--sign-with), decrypt (--verify-with, --verifications-out),
inline-sign, inline-verify (--verifications-out), armor (--label), dearmor; with
--no-armor, --with-key-password, --not-before/--not-after where the spec has them.

UNSUPPORTED_OPTION (37): --as=text and --as=clearsigned (the core makes binary
signatures only), --with-password, --with-session-key, --session-key-out, more
than one --sign-with key, several USERIDs (none: MISSING_ARG 19).
UNSUPPORTED_SUBCOMMAND (69): inline-detach. Cleartext-signed input: BAD_DATA (41).
As the spec says, decrypt does not fail when no signature verifies (VERIFICATIONS is
empty). Existing output files are refused (59). Our errors map to exit codes in
ERROR_EXITS; anything else exits 1 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone

import sop

from securemail import __version__
from securemail.crypto import armor as A
from securemail.crypto import keys, message, openpgp, signing
from securemail.crypto import packets as P
from securemail.errors import (DecryptionFailed, IntegrityError, KeyRefused, KeyUnusable,
                               MalformedMessage, NotEncrypted, PassphraseError, SecureMailError)

PROG = "securemail-sop"
MICALG = "pgp-sha512"  # openpgp.sign_data hashes with SHA-512
KEY_PROFILES = {"ed25519": ("ed25519", "Ed25519 certify+sign primary, Cv25519 encryption subkey"),
                "rfc4880": ("rsa3072", "RSA-3072 certify+sign primary, RSA-3072 encryption subkey"),
                "rsa4096": ("rsa4096", "RSA-4096 certify+sign primary, RSA-4096 encryption subkey")}
ARMOR_LABELS = {"sig": "PGP SIGNATURE", "cert": "PGP PUBLIC KEY BLOCK",
                "key": "PGP PRIVATE KEY BLOCK", "message": "PGP MESSAGE"}
AUTO_LABELS = {P.SECKEY: "key", P.PUBKEY: "cert"}
# Our errors -> SOP failures; the first matching class wins.
ERROR_EXITS: tuple[tuple[type[SecureMailError], type[sop.SOPException]], ...] = (
    (PassphraseError, sop.SOPKeyIsProtected), (DecryptionFailed, sop.SOPCouldNotDecrypt),
    (IntegrityError, sop.SOPCouldNotDecrypt), (NotEncrypted, sop.SOPInvalidDataType),
    (MalformedMessage, sop.SOPInvalidDataType), (KeyRefused, sop.SOPInvalidDataType))


class Verified(sop.SOPSigResult):
    """A VERIFICATIONS line: '<time> <signing key fpr> <primary fpr> mode:<binary|text>'."""

    def __str__(self) -> str:
        return super().__str__().rstrip()


def _load(blobs: dict[str, bytes], *, secret: bool = False) -> list[keys.Key]:
    """Every key in every input (named by handle); any refused key fails the command."""
    out = []
    for handle, blob in blobs.items():
        try:
            items = keys.load_keys(blob)
        except SecureMailError as e:
            raise sop.SOPInvalidDataType(f"{handle}: {e}") from None
        for item in items:
            if isinstance(item, KeyRefused):
                weak = str(item).startswith("weak algorithm")
                cls = sop.SOPAsymmetricAlgorithmUnsupported if weak else sop.SOPInvalidDataType
                raise cls(f"{handle}: {item}")
            if secret and not item.is_secret:
                raise sop.SOPInvalidDataType(f"{handle}: a certificate, not a secret key")
            # Certificates as public keys only: PGPy cannot encrypt to a secret Cv25519 key.
            out.append(item if secret else item.public())
    return out


def _refuse(given: dict[str, object]) -> None:
    """UNSUPPORTED_OPTION for the first option in ``given`` whose value is true."""
    for option, value in given.items():
        if value:
            raise sop.SOPUnsupportedOption(f"{option}: not supported by {PROG}")


def _unlock(stack: ExitStack, key: keys.Key, keypasswords: dict[str, bytes]) -> bool:
    """Unlock ``key`` for the life of ``stack``: each password as given, then right-stripped."""
    texts = [pw.decode("utf-8", "replace") for pw in keypasswords.values()]
    candidates = dict.fromkeys(c for t in texts for c in (t, t.rstrip()))
    for candidate in ([None] if not key.pgp.is_protected else candidates):
        try:
            stack.enter_context(key.pgp.unlocked(candidate))
            return True
        except PassphraseError:
            continue
    return False


def _signers(stack: ExitStack, blobs: dict, keypasswords: dict) -> list[keys.Key]:
    """The secret keys in ``blobs``, each checked able to sign now and unlocked in ``stack``."""
    out = _load(blobs, secret=True)
    for key in out:
        try:
            key.require_signing_key(time.time())
        except KeyUnusable as e:
            raise sop.SOPKeyCannotSign(str(e)) from None
        if not _unlock(stack, key, keypasswords):
            raise sop.SOPKeyIsProtected(f"cannot unlock the secret key {key.fingerprint}")
    return out


def _verified(verifs, start: datetime | None, end: datetime | None, required=True) -> list:
    """SOP lines for the valid signatures made within [start, end] (None: unbounded)."""
    mode = sop.SOPSigType.__members__
    lines = [Verified(datetime.fromtimestamp(v.result.created, timezone.utc), v.signing_fpr,
                      v.result.signer, mode.get(v.mode, sop.SOPSigType.binary))
             for v in verifs if v.valid and v.signing_fpr
             and not (start and v.result.created < start.timestamp())
             and not (end and v.result.created > end.timestamp())]
    if required and not lines:
        raise sop.SOPNoSignature("no valid signature by the given certificates")
    return lines


class SecureMailSop(sop.StatelessOpenPGP):
    """The sop subcommands, each a few lines over securemail.crypto."""

    def __init__(self) -> None:
        super().__init__(version=__version__, name=PROG, description="Stateless OpenPGP CLI",
                         backend="securemail crypto core (PGPy 0.6 for key parsing and primitives)")
        for parser in (self._parser, *self._subcommands.choices.values()):
            parser.error = self._arg_error(parser)

    def extend_parsers(self, subcommands, subparsers) -> None:
        self._subcommands = subcommands

    def _arg_error(self, parser):
        def error(msg: str):
            if "invalid choice" in msg and parser is self._parser:
                raise sop.SOPUnsupportedSubcommand(msg)
            if "invalid choice" in msg and "--profile" in msg:
                raise sop.SOPUnsupportedProfile(msg)
            if "not allowed with" in msg:
                raise sop.SOPIncompatibleOptions(msg)
            if "required" in msg or "expected" in msg:
                raise sop.SOPMissingRequiredArgument(msg)
            raise sop.SOPUnsupportedOption(msg)  # unrecognized arguments
        return error

    @property
    def generate_key_profiles(self) -> list[sop.SOPProfile]:
        return [sop.SOPProfile(name, desc) for name, (_, desc) in KEY_PROFILES.items()]

    def _get_indirect_input(self, name: str) -> bytes:
        prefix = name.split(":", 1)[0]
        if name.startswith("@") and prefix not in ("@ENV", "@FD"):
            raise sop.SOPUnsupportedSpecialPrefix(f"{prefix}: unknown special prefix")
        try:
            return super()._get_indirect_input(name)
        except (OSError, KeyError, ValueError):
            raise sop.SOPMissingInput(f"cannot read {name}") from None

    def _write_indirect_output(self, name: str, data: bytes) -> None:
        if not name.startswith("@FD:") and os.path.lexists(name):
            raise sop.SOPOutputExists(f"{name} exists; not overwritten")
        super()._write_indirect_output(name, data)

    def parse_timestamp(self, when: str | None) -> datetime | None:
        try:
            return super().parse_timestamp(when)
        except ValueError:
            raise sop.SOPInvalidDataType(f"not an ISO-8601 date: {when}") from None

    def run(self, argv: list[str] | None = None) -> int:
        """Parse, run one subcommand, write its output; return the exit code."""
        debug = "--debug" in (sys.argv[1:] if argv is None else argv)
        logging.getLogger().setLevel(logging.DEBUG if debug else logging.ERROR)
        try:
            args = vars(self._parser.parse_args(argv))
            method = getattr(self, f'_handle_{args.pop("subcmd").replace("-", "_")}')
            args.pop("debug")
            out = method(sys.stdin.buffer, **args)
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            return 0
        except sop.SOPException as e:
            code, mnemonic, msg = e.exit_code, e.mnemonic, str(e)
        except SecureMailError as e:
            cls = next((s for c, s in ERROR_EXITS if isinstance(e, c)), None)
            code, mnemonic, msg = (cls.exit_code, cls.mnemonic, str(e)) if cls else (1, "", str(e))
        except Exception as e:  # noqa: BLE001 - one line for the user, never a traceback
            code, mnemonic = 1, None
            msg = f"internal error ({type(e).__name__}{': ' + str(e) if debug else ''})"
        print(f"{PROG}: [{mnemonic or 'FAILURE'}] {' '.join(msg.split())}", file=sys.stderr)
        return code

    def generate_key(self, armor=True, uids=(), keypassword=None, profile=None, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        _refuse({"several USERIDs": len(uids) > 1})
        if not uids:  # openpgp.generate binds one user ID; a key without one is refused
            raise sop.SOPMissingRequiredArgument("give one USERID")
        passphrase = keypassword.decode("utf-8", "replace").rstrip() if keypassword else None
        if keypassword is not None and (not passphrase or "\ufffd" in passphrase):
            raise sop.SOPPasswordNotHumanReadable("the key password is empty or not UTF-8")
        algo = KEY_PROFILES[profile.name if profile else "ed25519"][0]
        key = openpgp.generate(uids[0], algo, None, passphrase)
        return key.armored() if armor else key.binary()

    def extract_cert(self, key, armor=True, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        certs = b"".join(k.public().binary() for k in _load({"KEY": key}, secret=True))
        return A.armor(certs, "PGP PUBLIC KEY BLOCK") if armor else certs

    def sign(self, data, armor=True, sigtype=sop.SOPSigType.binary, signers={},
             wantmicalg=False, keypasswords={}):
        _refuse({f"--as={sigtype.name}": sigtype != sop.SOPSigType.binary})
        with ExitStack() as stack:
            sigs = b"".join(message.sign_detached(data, k, armor=False)
                            for k in _signers(stack, signers, keypasswords))
        return (A.armor(sigs, "PGP SIGNATURE") if armor else sigs), (MICALG if wantmicalg else None)

    def verify(self, data, start=None, end=None, sig=b"", signers={}, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        lookup = signing.cert_lookup(_load(signers))
        return _verified(signing.verify_detached(data, sig, lookup), start, end)

    def inline_sign(self, data, armor=True, sigtype=sop.SOPInlineSigType.binary, signers={},
                    keypasswords={}, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        _refuse({f"--as={sigtype.name}": sigtype != sop.SOPInlineSigType.binary})
        with ExitStack() as stack:
            return signing.inline_sign(data, _signers(stack, signers, keypasswords), armor)

    def inline_verify(self, data, start=None, end=None, signers={}, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        content, verifs = signing.inline_verify(data, signing.cert_lookup(_load(signers)))
        return content, _verified(verifs, start, end)

    def encrypt(self, data, literaltype=sop.SOPLiteralDataType.binary, armor=True, passwords={},
                signers={}, keypasswords={}, recipients={}, profile=None, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        _refuse({"--with-password": passwords,
                 f"--as={literaltype.name}": literaltype != sop.SOPLiteralDataType.binary})
        if not recipients:
            raise sop.SOPMissingRequiredArgument("give at least one CERTS")
        certs = [(k, k.fingerprint) for k in _load(recipients)]
        with ExitStack() as stack:
            signer = _signers(stack, signers, keypasswords)  # checked: can sign now
            _refuse({"more than one --sign-with key": len(signer) > 1})
            try:
                return message.encrypt(data, certs, signer[0] if signer else None, armor=armor)
            except KeyUnusable as e:  # a recipient's certificate: expired, revoked, no subkey
                raise sop.SOPCertificateNotEncryptionCapable(str(e)) from None

    def decrypt(self, data, wantsessionkey=False, sessionkeys={}, passwords={}, signers={},
                start=None, end=None, keypasswords={}, secretkeys={}, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        _refuse({"--session-key-out": wantsessionkey, "--with-session-key": sessionkeys,
                 "--with-password": passwords})
        if not secretkeys:
            raise sop.SOPMissingRequiredArgument("give at least one KEYS")
        secrets, lookup = _load(secretkeys, secret=True), signing.cert_lookup(_load(signers))
        with ExitStack() as stack:
            usable = [k for k in secrets if _unlock(stack, k, keypasswords)]
            try:
                dec = message.decrypt(data, usable, lookup)
            except DecryptionFailed:
                if len(usable) < len(secrets):
                    raise sop.SOPKeyIsProtected("a secret key is locked; give --with-key-password")
                raise
        mode = "binary" if dec.mode == "b" else "text"  # the core does not report signature types
        verifs = [signing.explain(s, mode, lookup) for s in dec.signatures]
        return dec.data, _verified(verifs, start, end, False), None

    def armor(self, data, label=sop.SOPArmorLabel.auto, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        if A.is_armored(data):
            return data
        pkts = P.read_packets(data)
        if label == sop.SOPArmorLabel.auto:
            signatures = "sig" if all(p.tag == P.SIG for p in pkts) else "message"
            return A.armor(data, ARMOR_LABELS[AUTO_LABELS.get(pkts[0].tag, signatures)])
        return A.armor(data, ARMOR_LABELS[label.name])

    def dearmor(self, data, **kwargs):
        self.raise_on_unknown_options(**kwargs)
        if A.is_armored(data):
            return A.dearmor(data)[1]
        P.read_packets(data)  # binary already: only check it is OpenPGP
        return data


def main(argv: list[str] | None = None) -> int:
    return SecureMailSop().run(argv)


if __name__ == "__main__":
    sys.exit(main())
