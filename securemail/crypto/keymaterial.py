"""Key material as openpgp.py's PGPy parse holds it, turned into names and primitives objects.

No pgpy import: openpgp.py (the only module that imports PGPy) hands a key
packet's material here. Curves are named as GnuPG names them. Every elliptic
curve operation on a NIST or Brainpool curve (ECDSA signing and verifying,
ECDH encryption and decryption) runs on `cryptography` curves built here,
never on PGPy's: PGPy 0.6's Brainpool curve classes cannot be instantiated
with `cryptography` >= 42, and its per-call key rebuilding is slow.
"""

from __future__ import annotations

from . import primitives as _prim

# PGPy's EllipticCurveOID member names -> the names keys.py and users see.
CURVE_NAMES = {
    "NIST_P256": "nistp256", "NIST_P384": "nistp384", "NIST_P521": "nistp521",
    "Brainpool_P256": "brainpoolP256r1", "Brainpool_P384": "brainpoolP384r1",
    "Brainpool_P512": "brainpoolP512r1", "Curve25519": "cv25519", "Ed25519": "ed25519",
    "SECP256K1": "secp256k1",
}
CURVE_BITS = {"nistp256": 256, "nistp384": 384, "nistp521": 521, "brainpoolP256r1": 256,
              "brainpoolP384r1": 384, "brainpoolP512r1": 512, "cv25519": 256, "ed25519": 256,
              "secp256k1": 256}
# Curves PGPy cannot parse at all, named from the key packet's OID so a refusal can say which.
_OTHER_OIDS = {bytes.fromhex("2b6571"): "ed448", bytes.fromhex("2b656f"): "x448",
               bytes.fromhex("2b8104000a"): "secp256k1"}
_EC_ALGOS = {18: "ecdh", 19: "ecdsa", 22: "eddsa"}


def curve(km) -> str:
    """The curve of EC key material ("nistp256", "cv25519", ...)."""
    name = getattr(getattr(km, "oid", None), "name", "")
    return CURVE_NAMES.get(name, name.lower() or "unknown curve")


def algorithm(kind: str, km) -> tuple[str, int]:
    """("ed25519" | "cv25519" | "<kind>-<curve>", bits) for ``kind`` "ecdsa", "ecdh" or "eddsa"."""
    c = curve(km)
    if (kind, c) in (("eddsa", "ed25519"), ("ecdh", "cv25519")):
        return c, 256
    return f"{kind}-{c}", CURVE_BITS.get(c, 0)


def fast(km, algo: int, fpr: bytes, *, secret: bool):
    """A primitives Signer or EcdhSecret (secret), or Recipient (public); None: PGPy's path."""
    kind, c = type(km).__name__, curve(km)
    weierstrass = c in _prim.EC_CURVES
    if secret:
        if kind == "RSAPriv" or (kind == "EdDSAPriv" and c == "ed25519"):
            return _prim.Signer(algo, fpr, km.__privkey__())
        if kind == "ECDSAPriv" and weierstrass:
            return _prim.ecdsa_signer(c, fpr, int(km.s))
        if kind == "ECDHPriv" and weierstrass:
            return _prim.ecdh_secret(c, fpr, int(km.s), int(km.kdf.halg), int(km.kdf.encalg))
        if kind == "ECDHPriv" and c == "cv25519":
            return _prim.cv25519_secret(fpr, km.__privkey__(), int(km.kdf.halg), int(km.kdf.encalg))
        return None
    if kind == "RSAPub" and algo in (1, 2):
        return _prim.rsa_recipient(algo, fpr, km.__pubkey__())
    if kind == "ECDHPub" and c == "cv25519":
        return _prim.cv25519_recipient(fpr, bytes(km.p.x), int(km.kdf.halg), int(km.kdf.encalg))
    if kind == "ECDHPub" and weierstrass:
        return _prim.ecdh_recipient(c, fpr, int(km.p.x), int(km.p.y), int(km.kdf.halg),
                                    int(km.kdf.encalg))
    return None


def verifier(km, algo: int):
    """The primitives.Verifier of a signing key's material (public or secret), or None (no key
    type keys.py accepts, or a public key `cryptography` cannot build): nothing it signed is
    valid."""
    kind, c = type(km).__name__.replace("Priv", "Pub"), curve(km)
    try:
        if kind == "EdDSAPub" and c == "ed25519":
            return _prim.Verifier(algo, _prim.ed25519_public(bytes(km.p.x)))
        if kind == "RSAPub" and algo in _prim.RSA_ALGOS:
            return _prim.Verifier(algo, _prim.rsa_public(int(km.n), int(km.e)))
        if kind == "ECDSAPub" and c in _prim.EC_CURVES:
            return _prim.Verifier(algo, _prim.ec_public(c, int(km.p.x), int(km.p.y)))
    except (ValueError, TypeError):   # not a point on the curve, a bad modulus...
        return None
    return None


def verify(km, data: bytes, der_sig: bytes, hash_algo) -> bool | None:
    """An ECDSA check on our curves (True/False); None for other key types (PGPy checks those).

    The public key is built once per key packet and kept on its material.
    """
    if type(km).__name__ not in ("ECDSAPub", "ECDSAPriv"):
        return None
    pub = vars(km).get("_sm_ecpub")
    if pub is None:
        c = curve(km)
        if c not in _prim.EC_CURVES:
            return False
        try:
            pub = _prim.ec_public(c, int(km.p.x), int(km.p.y))
        except (ValueError, TypeError):  # not a point on the curve
            return False
        vars(km)["_sm_ecpub"] = pub
    return _prim.ecdsa_verify(pub, data, der_sig, hash_algo)


def rsa_p_below_q(km) -> None:
    """RFC 4880 §5.5.3 wants p < q (u = p^-1 mod q); OpenSSL gives p > q.

    GnuPG's libgcrypt assumes p < q and then fails about 1% of decryptions
    ("Wrong secret key used", dev.gnupg.org T4579). Self-signatures cover only
    n and e, so swapping keeps them valid.
    """
    if type(km).__name__ == "RSAPriv" and int(km.p) > int(km.q):
        mpi = type(km.p)
        km.p, km.q = mpi(int(km.q)), mpi(int(km.p))
        km.u = mpi(pow(int(km.p), -1, int(km.q)))
        km._compute_chksum()


def unparsable_curve(packets) -> str | None:
    """The curve of a v4 EC primary key packet PGPy could not parse, when we can name it."""
    body = packets[0].body if packets else b""
    if len(body) < 7 or body[0] != 4 or body[5] not in _EC_ALGOS:
        return None
    oid = body[7:7 + body[6]]
    return _OTHER_OIDS.get(oid) or next((n for n, (_, o) in _prim.EC_CURVES.items() if o == oid), None)
