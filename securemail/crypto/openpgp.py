"""The only module that imports PGPy: keys in, neutral facts and primitives out.

PGPy parses keys and checks their certifications; signatures and session keys
for Ed25519, RSA, Cv25519 and the NIST/Brainpool curves are made by primitives.py
from key objects keymaterial.py builds once per key (PGPy's own path remains for
other key types); document signatures, read by docsig.py, are checked there, and so
are ECDSA certifications and NIST/Brainpool ECDH decryption. Everything
PGPy gets wrong or leaves out (key validity, revocation, message integrity,
decompression limits, one exception root) is decided elsewhere in this package
from the neutral dataclasses returned here. Every PGPy exception is converted
into one of ours at this boundary.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes as _hashes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (CompressionAlgorithm, EllipticCurveOID, HashAlgorithm, KeyFlags,
                                PubKeyAlgorithm, RevocationReason, SignatureType,
                                SymmetricKeyAlgorithm)
    from pgpy.packet import Packet as _PgpyPacket
    from pgpy.packet.packets import PKESessionKeyV3

from ..errors import KeyRefused, PassphraseError
from .facts import KeyFacts, SigFacts, SubkeyFacts
from . import armor as _armor
from . import docsig as _docsig
from . import keymaterial as _mat
from . import packets as _pkt
from . import pgpy_patches as _patches
from . import primitives as _prim
from .certs import MAX_USER_IDS, split_certificates  # noqa: F401 - MAX_USER_IDS re-exported

warnings.filterwarnings("ignore", module=r"pgpy(\..*)?")
warnings.filterwarnings("ignore", message=".*(TripleDES|Camellia|CFB|Blowfish|CAST5|IDEA).*")


_ALGO_NAMES = {
    PubKeyAlgorithm.RSAEncryptOrSign: "rsa", PubKeyAlgorithm.RSAEncrypt: "rsa",
    PubKeyAlgorithm.RSASign: "rsa", PubKeyAlgorithm.DSA: "dsa",
    PubKeyAlgorithm.ElGamal: "elgamal", PubKeyAlgorithm.ECDSA: "ecdsa",
    PubKeyAlgorithm.EdDSA: "eddsa", PubKeyAlgorithm.ECDH: "ecdh",
}


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _algo(k) -> tuple[str, int]:
    name = _ALGO_NAMES.get(k.key_algorithm, str(k.key_algorithm))
    if name in ("eddsa", "ecdh", "ecdsa"):
        return _mat.algorithm(name, k._key.keymaterial)
    try:
        return name, int(k.key_size)
    except (TypeError, ValueError):
        return name, 0


def _verify_raw(signer, subject, sig) -> bool:
    """Cryptographic check only (no PGPy key-management opinions)."""
    try:
        return _verify_packet(signer._key, sig.hashdata(subject), sig)
    except Exception:  # noqa: BLE001 - any PGPy/cryptography failure means "did not verify"
        return False


def _verify_packet(keypkt, data: bytes, sig) -> bool:
    """ECDSA by keymaterial.py (PGPy cannot build Brainpool keys), the rest by PGPy."""
    hashobj = getattr(_hashes, sig.hash_algorithm.name)()
    ok = _mat.verify(keypkt.keymaterial, data, sig.__sig__, hashobj)
    if ok is None:
        ok = keypkt.verify(data, sig.__sig__, hashobj)
    return ok is True


def _facts_or_none(sig, signer, subject, **kw) -> SigFacts | None:
    """A signature PGPy cannot even describe (missing creation time, unknown hash) is ignored."""
    try:
        return _sig_facts(sig, signer, subject, **kw)
    except Exception:  # noqa: BLE001
        return None


def _signer_of(sig) -> str:
    try:
        return str(sig.signer or "")
    except Exception:  # noqa: BLE001 - no issuer subpacket at all
        return ""


def _sig_facts(sig, signer, subject, *, backsig_of=None) -> SigFacts:
    sp = sig._signature.subpackets
    reason = None
    text = ""
    if "ReasonForRevocation" in sp:
        r = next(iter(sp["ReasonForRevocation"]))
        reason, text = int(r.code), str(r.string)
    lifetime = sig.key_expiration
    flags = 0
    for f in (sig.key_flags or ()):
        flags |= int(f)
    created = _ts(sig.created) or 0.0
    expires = _ts(sig.expires_at) if sig.expires_at else None
    backsig_ok = False
    if backsig_of is not None and "EmbeddedSignature" in sp:
        backsig_ok = _verify_backsig(sp, backsig_of, subject)
    return SigFacts(
        type=int(sig.type), created=created, expires_at=expires,
        key_lifetime=lifetime.total_seconds() if lifetime else None,
        key_flags=flags if sig.key_flags else None, issuer_keyid=str(sig.signer or "").upper(),
        hash_name=sig.hash_algorithm.name, revocation_code=reason, revocation_text=text,
        primary_uid=bool("PrimaryUserID" in sp and next(iter(sp["PrimaryUserID"])).primary),
        verified=signer is not None and _verify_raw(signer, subject, sig), backsig_verified=backsig_ok)


def _verify_backsig(sp, subkey, primary) -> bool:
    try:
        emb = next(iter(sp["EmbeddedSignature"]))
        back = pgpy.PGPSignature()
        back._signature = emb._sig if hasattr(emb, "_sig") else emb
        return _verify_packet(subkey._key, back.hashdata(subkey), back)
    except Exception:  # noqa: BLE001
        return False


class PgpKey:
    """One parsed transferable key (public or secret), wrapping a pgpy.PGPKey."""

    def __init__(self, k) -> None:
        self._k = k
        for part in (k, *k.subkeys.values()):
            _patches.freeze_fingerprint(part._key)
        self.fingerprint = str(k.fingerprint).replace(" ", "").upper()
        self._privcache: dict[tuple[str, bool], object] = {}  # primitives, by (keyid, secret)
        self._verifiers: dict[str, object] = {}   # primitives.Verifier or None, by keyid

    # --- facts ----------------------------------------------------------------
    def facts(self) -> KeyFacts:
        k = self._k
        algo, bits = _algo(k)
        me = k.fingerprint.keyid
        direct = tuple(f for f in (_facts_or_none(s, k if _signer_of(s) == me else None, k)
                                   for s in k.__sig__) if f)
        uids = []
        for u in k.userids[:MAX_USER_IDS]:
            sigs = tuple(f for f in (_facts_or_none(s, k, u) for s in u.__sig__ if _signer_of(s) == me) if f)
            uids.append((u.userid if u.is_uid else "", sigs))
        subs = []
        for kid, sk in k.subkeys.items():
            salgo, sbits = _algo(sk)
            sigs = tuple(f for f in (_facts_or_none(s, k, sk, backsig_of=sk) for s in sk.__sig__
                                     if _signer_of(s) == me) if f)
            subs.append(SubkeyFacts(str(sk.fingerprint).replace(" ", "").upper(), kid.upper(), salgo,
                                    sbits, _ts(sk.created) or 0.0, sigs, not sk.is_public))
        return KeyFacts(self.fingerprint, k.fingerprint.keyid.upper(), algo, bits,
                        _ts(k.created) or 0.0, direct, tuple(uids), tuple(subs),
                        not k.is_public, bool(not k.is_public and k.is_protected))

    @property
    def is_secret(self) -> bool:
        return not self._k.is_public

    @property
    def is_protected(self) -> bool:
        return self.is_secret and bool(self._k.is_protected)

    def binary(self) -> bytes:
        return bytes(self._k)

    def armored(self) -> bytes:
        label = "PGP PUBLIC KEY BLOCK" if self._k.is_public else "PGP PRIVATE KEY BLOCK"
        return _armor.armor(self.binary(), label)

    def public(self) -> "PgpKey":
        if self._k.is_public:
            return self
        if getattr(self, "_pub", None) is None:
            self._pub = PgpKey(self._k.pubkey)
        return self._pub

    def _subkey(self, keyid: str):
        if keyid.upper() == self._k.fingerprint.keyid.upper():
            return self._k
        for kid, sk in self._k.subkeys.items():
            if kid.upper() == keyid.upper():
                return sk
        raise KeyError(keyid)

    # --- secrets ----------------------------------------------------------------
    @contextlib.contextmanager
    def unlocked(self, passphrase: str | None):
        """Scope in which secret material is usable; cached RSA keys are dropped on exit."""
        if not self.is_secret:
            raise PassphraseError("this is a public key; the secret key is needed")
        if not self.is_protected:
            self._cache_private()
            yield self
            return
        if passphrase is None:
            raise PassphraseError("the secret key is passphrase-protected; give the passphrase")
        try:
            ctx = self._k.unlock(passphrase)
            ctx.__enter__()
        except Exception:  # noqa: BLE001
            raise PassphraseError("wrong passphrase for the secret key") from None
        try:
            self._cache_private()
            yield self
        finally:
            self._drop_cache()
            ctx.__exit__(None, None, None)

    def _materials(self) -> list:
        return [sk._key.keymaterial for sk in (self._k, *self._k.subkeys.values())]

    def _cache_private(self) -> None:
        _patches.cache_rsa_private(self._materials())

    def _drop_cache(self) -> None:
        self._privcache = {slot: v for slot, v in self._privcache.items() if not slot[1]}
        _patches.drop_rsa_private(self._materials())

    # --- primitives ----------------------------------------------------------------
    def sign_data(self, keyid: str, data: bytes, *, hash_name: str = "SHA512",
                  created: datetime | None = None) -> bytes:
        """A binary-document (0x00) signature packet over ``data`` by (sub)key ``keyid``."""
        signer = self._subkey(keyid)
        if not self.is_secret or (self.is_protected and not signer.is_unlocked):
            raise PassphraseError("the secret key is locked; give its passphrase")
        try:
            fast = self._fast(keyid, signer, secret=True)
            if isinstance(fast, _prim.Signer) and hash_name in _prim.SIGNATURE_HASHES:
                return fast.sign(data, _prim.timestamp(created, time.time), hash_name)
            sig = pgpy.PGPSignature.new(SignatureType.BinaryDocument, signer.key_algorithm,
                                        HashAlgorithm[hash_name], signer.fingerprint.keyid,
                                        created=created)
            return bytes(signer._sign(data, sig))
        except Exception:  # noqa: BLE001 - PGPy/cryptography failure while signing
            raise PassphraseError("the secret key cannot sign (locked or damaged)") from None

    def verify_data(self, keyid: str, data: bytes, sig: _docsig.SignaturePacket) -> bool:
        """Does ``sig`` sign ``data`` by the (sub)key ``keyid``? Checked by `cryptography` (the
        data hashed in place) for every key type keys.py accepts, with the SHA-2 hashes."""
        try:
            sk = self._subkey(keyid)
        except KeyError:
            return False
        slot = keyid.upper()
        if slot not in self._verifiers:
            self._verifiers[slot] = _mat.verifier(sk._key.keymaterial, int(sk.key_algorithm))
        check = self._verifiers[slot]
        return (check is not None and sig.hash_name in _prim.SIGNATURE_HASHES
                and check.verify(_docsig.digest(sig, data), sig.hash_name, sig.pk_algo, sig.values))

    def encrypt_session_key(self, keyid: str, sym_id: int, session_key: bytes) -> bytes:
        """A PKESK packet carrying ``session_key`` to the (sub)key ``keyid``."""
        if self.is_secret:  # PGPy cannot encrypt to a secret Cv25519 key object
            return self.public().encrypt_session_key(keyid, sym_id, session_key)
        sk = self._subkey(keyid)
        fast = self._fast(keyid, sk, secret=False)
        if fast is not None:
            return fast.encrypt_session_key(sym_id, session_key)
        pkesk = PKESessionKeyV3()
        pkesk.encrypter = bytearray(bytes.fromhex(sk.fingerprint.keyid))
        pkesk.pkalg = sk.key_algorithm
        pkesk.encrypt_sk(sk._key, SymmetricKeyAlgorithm(sym_id), session_key)
        return bytes(pkesk)

    def _fast(self, keyid: str, sk, *, secret: bool):
        """The primitives.Signer (secret) or Recipient of ``sk``, built once; None: use PGPy."""
        slot = (keyid.upper(), secret)
        if slot not in self._privcache:
            fpr = bytes.fromhex(str(sk.fingerprint).replace(" ", ""))
            self._privcache[slot] = _mat.fast(sk._key.keymaterial, int(sk.key_algorithm), fpr,
                                              secret=secret)
        return self._privcache[slot]

    def decrypt_session_key(self, keyid: str, pkesk_raw: bytes) -> tuple[int, bytes] | None:
        """(cipher id, session key) from a PKESK packet, or None when it is not for us."""
        try:
            sk = self._subkey(keyid)
            if self.is_protected and not sk.is_unlocked:
                return None   # locked: nothing secret is read (nor kept for after the unlock)
            mine = self._fast(keyid, sk, secret=True)  # ECDH on NIST, Brainpool, Cv25519: not on PGPy
            if isinstance(mine, _prim.EcdhSecret):
                return mine.decrypt_session_key(_pkt.read_packet(pkesk_raw, 0)[0].body)
            pkt = _PgpyPacket(bytearray(pkesk_raw))
            alg, key = pkt.decrypt_sk(sk._key)
            return int(alg), bytes(key)
        except Exception:  # noqa: BLE001 - wrong key, bad padding, unsupported: not for us
            return None


def parse_keys(data: bytes) -> list[PgpKey | KeyRefused]:
    """Every transferable key in ``data`` (armored or binary, public or secret).

    certs.split frames and limits them first; a key PGPy cannot parse is
    returned as a KeyRefused in its place so the caller can report it and go on.
    """
    out: list[PgpKey | KeyRefused] = []
    for g in split_certificates(data):
        if isinstance(g, KeyRefused):
            out.append(g)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                k = pgpy.PGPKey()
                k.parse(bytearray(b"".join(p.raw for p in g)))
            out.append(PgpKey(k))
        except Exception:  # noqa: BLE001
            curve = _mat.unparsable_curve(g)
            out.append(KeyRefused(f"{curve} keys are not supported" if curve else "key cannot be parsed"))
    return out


_GENERATE = {  # --algorithm: (primary, subkey) as (PGPy algorithm, curve or RSA bits)
    "ed25519": ((PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519),
                (PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)),
    "nistp256": ((PubKeyAlgorithm.ECDSA, EllipticCurveOID.NIST_P256),
                 (PubKeyAlgorithm.ECDH, EllipticCurveOID.NIST_P256)),
    "nistp384": ((PubKeyAlgorithm.ECDSA, EllipticCurveOID.NIST_P384),
                 (PubKeyAlgorithm.ECDH, EllipticCurveOID.NIST_P384)),
    "rsa3072": ((PubKeyAlgorithm.RSAEncryptOrSign, 3072),) * 2,
    "rsa4096": ((PubKeyAlgorithm.RSAEncryptOrSign, 4096),) * 2,
}


def p_below_q(part) -> None:
    """``keymaterial.rsa_p_below_q`` on a key or subkey PGPy made, and its packet length counted
    again: the new u = p^-1 mod q can take a byte more or less than the u PGPy counted, and the
    key's bytes then did not parse (about 1 RSA key in 25 failed to generate)."""
    _mat.rsa_p_below_q(part._key.keymaterial)
    part._key.update_hlen()


def generate(uid: str, algorithm: str, lifetime: timedelta | None,
             passphrase: str | None) -> PgpKey:
    """A signing primary and an encryption subkey of the same family (see _GENERATE)."""
    if algorithm not in _GENERATE:
        raise KeyRefused(f"unknown algorithm {algorithm!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        primary, sub = (pgpy.PGPKey.new(*spec) for spec in _GENERATE[algorithm])
        exp = {"key_expiration": lifetime} if lifetime else {}
        primary.add_uid(pgpy.PGPUID.new(uid), usage={KeyFlags.Sign, KeyFlags.Certify},
                        hashes=[HashAlgorithm.SHA512, HashAlgorithm.SHA256],
                        ciphers=[SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES128],
                        compression=[CompressionAlgorithm.Uncompressed, CompressionAlgorithm.ZLIB],
                        primary=True, **exp)
        primary.add_subkey(sub, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage}, **exp)
        for part in (primary, *primary.subkeys.values()):
            p_below_q(part)
        if passphrase:
            primary.protect(passphrase, SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)
    # Re-parse so the object is exactly what a later load gives.
    item = parse_keys(bytes(primary))[0]
    if isinstance(item, KeyRefused):
        raise item
    return item


def revoke(key: PgpKey, passphrase: str | None, reason: str, comment: str) -> bytes:
    """A key revocation signature packet; the caller merges it into the key."""
    codes = {"none": RevocationReason.NotSpecified, "superseded": RevocationReason.Superseded,
             "compromised": RevocationReason.Compromised, "retired": RevocationReason.Retired}
    with key.unlocked(passphrase), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sig = key._k.revoke(key._k, reason=codes[reason], comment=comment)
        except Exception:  # noqa: BLE001
            raise KeyRefused("cannot make a revocation with this key") from None
    return bytes(sig)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
