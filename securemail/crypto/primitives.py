"""Signature and session-key packets straight on `cryptography`: the per-message path, no PGPy.

openpgp.py turns a (sub)key into a Signer or a Recipient once (the `cryptography`
key object is built then, not per message); each message then costs one pass of
hashlib over the data, one `cryptography` call and some byte concatenation.

* Signer.sign: a v4 binary-document signature (RFC 4880 §5.2.3) with exactly
  the subpackets PGPy wrote for us before: hashed creation time (2) and issuer
  fingerprint (33, v4), unhashed issuer key ID (16). EdDSA keeps R and S as two
  MPIs of the native signature halves (RFC 4880bis §5.2.3.3, draft-koch-eddsa),
  over the digest; RSA is PKCS#1 v1.5 over the digest with its DigestInfo.
* Recipient.encrypt_session_key: a v3 PKESK (RFC 4880 §5.1). Cv25519 is ECDH
  per RFC 6637 §8 (ephemeral X25519, KDF of §7 with the §8 parameter block,
  PKCS#5 padding, AES key wrap); RSA is PKCS#1 v1.5 encryption.
Key types not covered here stay on PGPy (openpgp.py decides).
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from . import packets as P

RSA_ALGOS = (1, 2, 3)            # RSA encrypt-or-sign, encrypt-only, sign-only
ECDH, EDDSA = 18, 22
CV25519_OID = bytes.fromhex("2b060104019755010501")   # 1.3.6.1.4.1.3029.1.5.1
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
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.fingerprint) != 20:
            raise ValueError("a v4 fingerprint is 20 bytes")
        ok = (self.algo == EDDSA and isinstance(self.key, ed25519.Ed25519PrivateKey)) or \
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
        else:
            value = mpi(self.key.sign(digest, _PKCS1, Prehashed(prehash)))
        unhashed = b"\x09\x10" + self.fingerprint[-8:]
        return P.write_packet(P.SIG, head + b"\x00\x0a" + unhashed + digest[:2] + value)


@dataclass(frozen=True, eq=False)
class Recipient:
    """An encryption (sub)key: key ID, algorithm, `cryptography` public key, ECDH parameters."""
    algo: int
    keyid: bytes
    key: x25519.X25519PublicKey | rsa.RSAPublicKey = field(repr=False)
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
            eph = x25519.X25519PrivateKey.generate()
            shared = eph.exchange(self.key)
            kek = self.kdf_hash(b"\x00\x00\x00\x01" + shared + self.kdf_param).digest()
            wrapped = keywrap.aes_key_wrap(kek[:self.kek_size], m + bytes((pad,)) * pad)
            esk = mpi(b"\x40" + eph.public_key().public_bytes_raw()) + bytes((len(wrapped),)) + wrapped
        return P.write_packet(P.PKESK, b"\x03" + self.keyid + bytes((self.algo,)) + esk)


def rsa_recipient(algo: int, fingerprint: bytes, key: rsa.RSAPublicKey) -> Recipient:
    return Recipient(algo, fingerprint[-8:], key)


def cv25519_recipient(fingerprint: bytes, public: bytes, kdf_hash_id: int, kek_id: int
                      ) -> Recipient | None:
    """A Cv25519 ECDH recipient from the raw 32-byte public key (without the 0x40 prefix)
    and the key's KDF parameters; None when they are outside what RFC 6637 allows."""
    if kdf_hash_id not in KDF_HASHES or kek_id not in KEK_SIZES or len(fingerprint) != 20:
        return None
    param = (bytes((len(CV25519_OID),)) + CV25519_OID + bytes((ECDH, 3, 1, kdf_hash_id, kek_id))
             + b"Anonymous Sender    " + fingerprint)
    return Recipient(ECDH, fingerprint[-8:], x25519.X25519PublicKey.from_public_bytes(public),
                     param, KDF_HASHES[kdf_hash_id], KEK_SIZES[kek_id])
