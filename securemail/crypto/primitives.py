"""Signature and session-key packets straight on `cryptography`: the per-message path, no PGPy.

openpgp.py turns a (sub)key into a Signer or a Recipient once (the `cryptography`
key object is built then, not per message); each message then costs one pass of
hashlib over the data, one `cryptography` call and some byte concatenation.

* Signer.sign: a v4 binary-document signature (RFC 4880 §5.2.3) with exactly
  the subpackets PGPy wrote for us before: hashed creation time (2) and issuer
  fingerprint (33, v4), unhashed issuer key ID (16). EdDSA keeps R and S as two
  MPIs of the native signature halves (RFC 4880bis §5.2.3.3, draft-koch-eddsa),
  over the digest; ECDSA (NIST and Brainpool curves) writes r and s as two MPIs
  (RFC 6637 §6); RSA is PKCS#1 v1.5 over the digest with its DigestInfo.
* Recipient.encrypt_session_key: a v3 PKESK (RFC 4880 §5.1). ECDH per RFC 6637
  §8 on Cv25519 (ephemeral X25519, point 0x40||x) or on a NIST/Brainpool curve
  (ephemeral key on the recipient's curve, point 0x04||x||y, shared secret x);
  then the KDF of §7 with the §8 parameter block, PKCS#5 padding, AES key wrap.
  RSA is PKCS#1 v1.5 encryption.
* EcdhSecret.decrypt_session_key: the inverse, for NIST/Brainpool ECDH subkeys (PGPy's own
  path cannot build Brainpool keys with this `cryptography`) and for Cv25519 ones (PGPy's path
  rebuilt the key and walked its packet classes for every message: a tenth of the bridge's
  reading time for a small message).
* ecdsa_verify: an ECDSA signature on any of EC_CURVES, by `cryptography`.
* Verifier.verify: a document signature's values (docsig.py read them) over its digest, for
  Ed25519, RSA and ECDSA signing keys.
Key types not covered here stay on PGPy (keymaterial.py decides).
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature

from . import packets as P

RSA_ALGOS = (1, 2, 3)            # RSA encrypt-or-sign, encrypt-only, sign-only
ECDH, ECDSA, EDDSA = 18, 19, 22
CV25519_OID = bytes.fromhex("2b060104019755010501")   # 1.3.6.1.4.1.3029.1.5.1
# The Weierstrass curves we accept for ECDSA and ECDH (RFC 6637 §11, RFC 5639): gpg's name ->
# (`cryptography` curve, the OID's DER body as it appears in key packets and in the KDF Param).
EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], bytes]] = {
    "nistp256": (ec.SECP256R1, bytes.fromhex("2a8648ce3d030107")),
    "nistp384": (ec.SECP384R1, bytes.fromhex("2b81040022")),
    "nistp521": (ec.SECP521R1, bytes.fromhex("2b81040023")),
    "brainpoolP256r1": (ec.BrainpoolP256R1, bytes.fromhex("2b2403030208010107")),
    "brainpoolP384r1": (ec.BrainpoolP384R1, bytes.fromhex("2b240303020801010b")),
    "brainpoolP512r1": (ec.BrainpoolP512R1, bytes.fromhex("2b240303020801010d")),
}
SIGNATURE_HASHES: dict[str, tuple[int, Callable, hashes.HashAlgorithm]] = {
    "SHA256": (8, hashlib.sha256, hashes.SHA256()), "SHA384": (9, hashlib.sha384, hashes.SHA384()),
    "SHA512": (10, hashlib.sha512, hashes.SHA512()), "SHA224": (11, hashlib.sha224, hashes.SHA224())}
KDF_HASHES = {8: hashlib.sha256, 9: hashlib.sha384, 10: hashlib.sha512}
KEK_SIZES = {7: 16, 8: 24, 9: 32}  # AES-128/192/256 key wrap
_PKCS1 = padding.PKCS1v15()


def mpi(value: bytes) -> bytes:
    """The MPI (RFC 4880 §3.2) of the big-endian octet string ``value``, leading zeros stripped."""
    v = value.lstrip(b"\x00")
    bits = (len(v) - 1) * 8 + v[0].bit_length() if v else 0
    return bits.to_bytes(2, "big") + v


def _int_mpi(n: int) -> bytes:
    return mpi(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big"))


def timestamp(created: datetime | None, now: Callable[[], float]) -> int:
    """Seconds since the epoch; a naive datetime is read as UTC (as PGPy did)."""
    if created is None:
        return int(now())
    return calendar.timegm(created.utctimetuple())


@dataclass(frozen=True, eq=False)
class Signer:
    """A signing (sub)key: public-key algorithm, v4 fingerprint, `cryptography` private key."""
    algo: int
    fingerprint: bytes
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.fingerprint) != 20:
            raise ValueError("a v4 fingerprint is 20 bytes")
        ok = (self.algo == EDDSA and isinstance(self.key, ed25519.Ed25519PrivateKey)) or \
             (self.algo == ECDSA and isinstance(self.key, ec.EllipticCurvePrivateKey)) or \
             (self.algo in RSA_ALGOS and isinstance(self.key, rsa.RSAPrivateKey))
        if not ok:
            raise ValueError(f"algorithm {self.algo} does not match {type(self.key).__name__}")

    def sign(self, data: bytes, created: int, hash_name: str = "SHA512") -> bytes:
        """The signature packet (type 0x00, binary document) over ``data``."""
        hash_id, new_hash, prehash = SIGNATURE_HASHES[hash_name]
        hashed = b"\x05\x02" + created.to_bytes(4, "big") + b"\x16\x21\x04" + self.fingerprint
        head = bytes((4, 0x00, self.algo, hash_id)) + len(hashed).to_bytes(2, "big") + hashed
        h = new_hash(data)
        h.update(head)
        h.update(b"\x04\xff" + len(head).to_bytes(4, "big"))
        digest = h.digest()
        if self.algo == EDDSA:
            raw = self.key.sign(digest)
            value = mpi(raw[:32]) + mpi(raw[32:])
        elif self.algo == ECDSA:
            r, s = decode_dss_signature(self.key.sign(digest, ec.ECDSA(Prehashed(prehash))))
            value = _int_mpi(r) + _int_mpi(s)
        else:
            value = mpi(self.key.sign(digest, _PKCS1, Prehashed(prehash)))
        unhashed = b"\x09\x10" + self.fingerprint[-8:]
        return P.write_packet(P.SIG, head + b"\x00\x0a" + unhashed + digest[:2] + value)


@dataclass(frozen=True, eq=False)
class Verifier:
    """A signing (sub)key's public half: checks a v4 signature's values against its digest."""
    algo: int
    key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(repr=False)

    def verify(self, digest: bytes, hash_name: str, pk_algo: int, values: tuple[bytes, ...]) -> bool:
        """True when ``values`` (the signature's MPIs) sign ``digest`` by this key; a signature
        made for another algorithm, with the wrong count or size of values, is False."""
        prehash = SIGNATURE_HASHES[hash_name][2]
        if pk_algo != self.algo:
            return False
        try:
            if self.algo == EDDSA and len(values) == 2 and all(len(v) <= 32 for v in values):
                self.key.verify(b"".join(v.rjust(32, b"\x00") for v in values), digest)
            elif self.algo == ECDSA and len(values) == 2:
                r, s = (int.from_bytes(v, "big") for v in values)
                self.key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(prehash)))
            elif self.algo in RSA_ALGOS and len(values) == 1 and len(values[0]) <= (size := (self.key.key_size + 7) // 8):
                self.key.verify(values[0].rjust(size, b"\x00"), digest, _PKCS1, Prehashed(prehash))
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, eq=False)
class Recipient:
    """An encryption (sub)key: key ID, algorithm, `cryptography` public key, ECDH parameters."""
    algo: int
    keyid: bytes
    key: x25519.X25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey = field(repr=False)
    kdf_param: bytes = b""   # RFC 6637 §8 "Param", ECDH only
    kdf_hash: Callable | None = None
    kek_size: int = 0

    def encrypt_session_key(self, sym_id: int, session_key: bytes) -> bytes:
        """The PKESK packet carrying ``session_key`` for cipher ``sym_id``."""
        m = bytes((sym_id,)) + session_key + (sum(session_key) & 0xFFFF).to_bytes(2, "big")
        if self.algo in RSA_ALGOS:
            esk = mpi(self.key.encrypt(m, _PKCS1))
        else:
            pad = 8 - len(m) % 8
            if isinstance(self.key, x25519.X25519PublicKey):
                eph = x25519.X25519PrivateKey.generate()
                shared, point = eph.exchange(self.key), b"\x40" + eph.public_key().public_bytes_raw()
            else:
                eph = ec.generate_private_key(self.key.curve)
                shared = eph.exchange(ec.ECDH(), self.key)
                point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
            kek = _kek(self.kdf_hash, shared, self.kdf_param, self.kek_size)
            wrapped = keywrap.aes_key_wrap(kek, m + bytes((pad,)) * pad)
            esk = mpi(point) + bytes((len(wrapped),)) + wrapped
        return P.write_packet(P.PKESK, b"\x03" + self.keyid + bytes((self.algo,)) + esk)


@dataclass(frozen=True, eq=False)
class EcdhSecret:
    """An ECDH secret subkey (NIST, Brainpool or Cv25519), for opening the PKESKs made to it
    (RFC 6637 §8; Cv25519's point is 0x40 || the native X25519 public key)."""
    key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey = field(repr=False)
    kdf_param: bytes
    kdf_hash: Callable
    kek_size: int

    def decrypt_session_key(self, body: bytes) -> tuple[int, bytes] | None:
        """(cipher id, session key) from a v3 PKESK body, or None when it does not open."""
        if len(body) < 12 or body[0] != 3 or body[9] != ECDH:
            return None
        n = (int.from_bytes(body[10:12], "big") + 7) // 8
        point, rest = body[12:12 + n], body[12 + n:]
        if len(point) != n or not rest or len(rest) != 1 + rest[0]:
            return None
        try:
            shared = self._shared(point)
            m = keywrap.aes_key_unwrap(_kek(self.kdf_hash, shared, self.kdf_param, self.kek_size),
                                       rest[1:])
        except (ValueError, keywrap.InvalidUnwrap):
            return None  # not a point on our curve, or not wrapped for us
        pad = m[-1] if m else 0
        if not 1 <= pad <= 8 or m[-pad:] != bytes((pad,)) * pad or len(m) - pad < 4:
            return None
        sym, key, check = m[0], m[1:-pad - 2], m[-pad - 2:-pad]
        if (sum(key) & 0xFFFF).to_bytes(2, "big") != check:
            return None
        return sym, key

    def _shared(self, point: bytes) -> bytes:
        """The shared secret with the sender's ephemeral ``point``; ValueError when it is not one
        (for X25519 also a point of small order, whose shared secret would be all zeros)."""
        if isinstance(self.key, x25519.X25519PrivateKey):
            if len(point) != 33 or point[0] != 0x40:
                raise ValueError("not a Cv25519 point")
            return self.key.exchange(x25519.X25519PublicKey.from_public_bytes(point[1:]))
        return self.key.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(self.key.curve, point))


def _kek(kdf_hash: Callable, shared: bytes, param: bytes, size: int) -> bytes:
    """RFC 6637 §7: one hash block of 00000001 || shared secret || Param, cut to the KEK size."""
    return kdf_hash(b"\x00\x00\x00\x01" + shared + param).digest()[:size]


def _kdf_param(oid: bytes, fingerprint: bytes, kdf_hash_id: int, kek_id: int) -> bytes:
    return (bytes((len(oid),)) + oid + bytes((ECDH, 3, 1, kdf_hash_id, kek_id))
            + b"Anonymous Sender    " + fingerprint)


def _kdf_ok(fingerprint: bytes, kdf_hash_id: int, kek_id: int) -> bool:
    return kdf_hash_id in KDF_HASHES and kek_id in KEK_SIZES and len(fingerprint) == 20


def rsa_recipient(algo: int, fingerprint: bytes, key: rsa.RSAPublicKey) -> Recipient:
    return Recipient(algo, fingerprint[-8:], key)


def cv25519_recipient(fingerprint: bytes, public: bytes, kdf_hash_id: int, kek_id: int
                      ) -> Recipient | None:
    """A Cv25519 ECDH recipient from the raw 32-byte public key (without the 0x40 prefix)
    and the key's KDF parameters; None when they are outside what RFC 6637 allows."""
    if not _kdf_ok(fingerprint, kdf_hash_id, kek_id):
        return None
    param = _kdf_param(CV25519_OID, fingerprint, kdf_hash_id, kek_id)
    return Recipient(ECDH, fingerprint[-8:], x25519.X25519PublicKey.from_public_bytes(public),
                     param, KDF_HASHES[kdf_hash_id], KEK_SIZES[kek_id])


def ed25519_public(point: bytes) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(point)


def rsa_public(n: int, e: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(e, n).public_key()


def ec_public(curve: str, x: int, y: int) -> ec.EllipticCurvePublicKey:
    """The public key (x, y) on one of EC_CURVES; ValueError when the point is not on it."""
    return ec.EllipticCurvePublicNumbers(x, y, EC_CURVES[curve][0]()).public_key()


def ecdh_recipient(curve: str, fingerprint: bytes, x: int, y: int, kdf_hash_id: int, kek_id: int
                   ) -> Recipient | None:
    """A NIST/Brainpool ECDH recipient; None when its KDF parameters are outside RFC 6637."""
    if curve not in EC_CURVES or not _kdf_ok(fingerprint, kdf_hash_id, kek_id):
        return None
    param = _kdf_param(EC_CURVES[curve][1], fingerprint, kdf_hash_id, kek_id)
    return Recipient(ECDH, fingerprint[-8:], ec_public(curve, x, y), param,
                     KDF_HASHES[kdf_hash_id], KEK_SIZES[kek_id])


def ecdh_secret(curve: str, fingerprint: bytes, secret: int, kdf_hash_id: int, kek_id: int
                ) -> EcdhSecret | None:
    if curve not in EC_CURVES or not _kdf_ok(fingerprint, kdf_hash_id, kek_id):
        return None
    param = _kdf_param(EC_CURVES[curve][1], fingerprint, kdf_hash_id, kek_id)
    return EcdhSecret(ec.derive_private_key(secret, EC_CURVES[curve][0]()), param,
                      KDF_HASHES[kdf_hash_id], KEK_SIZES[kek_id])


def cv25519_secret(fingerprint: bytes, key: x25519.X25519PrivateKey, kdf_hash_id: int, kek_id: int
                   ) -> EcdhSecret | None:
    """A Cv25519 ECDH secret subkey (``key``: the X25519 private key, in its native byte order)."""
    if not _kdf_ok(fingerprint, kdf_hash_id, kek_id):
        return None
    return EcdhSecret(key, _kdf_param(CV25519_OID, fingerprint, kdf_hash_id, kek_id),
                      KDF_HASHES[kdf_hash_id], KEK_SIZES[kek_id])


def ecdsa_signer(curve: str, fingerprint: bytes, secret: int) -> Signer:
    return Signer(ECDSA, fingerprint, ec.derive_private_key(secret, EC_CURVES[curve][0]()))


def ecdsa_verify(key: ec.EllipticCurvePublicKey, data: bytes, der_sig: bytes,
                 hash_algo: hashes.HashAlgorithm) -> bool:
    try:
        key.verify(der_sig, data, ec.ECDSA(hash_algo))
        return True
    except InvalidSignature:
        return False
