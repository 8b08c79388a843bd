"""NIST and Brainpool curves (and Cv25519 session keys) on primitives.py, checked against PGPy's own code (issue 15, item 3).

PGPy still has working ECDSA and ECDH code for the NIST curves: every packet
primitives.py makes is opened or verified by it, and every packet it makes is
opened by us. Brainpool (which PGPy cannot compute with this `cryptography`)
round-trips here and against gpg in tests/interop/test_nist_keys.py. Damaged
PKESKs do not open; keys on other curves are refused naming the curve.
"""

from __future__ import annotations

import time
import warnings

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from securemail.crypto import keys, message, openpgp, primitives, signing
from securemail.crypto import packets as P
from securemail.errors import KeyRefused

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (EllipticCurveOID, HashAlgorithm, KeyFlags, PubKeyAlgorithm,
                                SymmetricKeyAlgorithm)
    from pgpy.packet import Packet as PgpyPacket
    from pgpy.packet.packets import PKESessionKeyV3

NIST = {  # curve -> (PGPy's OID, bits, octets per coordinate)
    "nistp256": (EllipticCurveOID.NIST_P256, 256, 32), "nistp384": (EllipticCurveOID.NIST_P384, 384, 48),
    "nistp521": (EllipticCurveOID.NIST_P521, 521, 66)}
DATA = b"Note au ministre\r\n\x00\xff" * 50
SESSION = bytes(range(32))


def pgpy_key(curve: str) -> keys.Key:
    """ECDSA primary + ECDH subkey made by PGPy (not by our generate)."""
    oid = NIST[curve][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = pgpy.PGPKey.new(PubKeyAlgorithm.ECDSA, oid)
        k.add_uid(pgpy.PGPUID.new(f"C <{curve}@example.org>"), usage={KeyFlags.Sign, KeyFlags.Certify},
                  hashes=[HashAlgorithm.SHA256], ciphers=[SymmetricKeyAlgorithm.AES256])
        k.add_subkey(pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, oid),
                     usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
        return keys.load_key(bytes(k))


@pytest.fixture(scope="module", params=list(NIST))
def nist(request) -> tuple[str, keys.Key]:
    return request.param, pgpy_key(request.param)


def enc_keyid(key: keys.Key) -> str:
    [comp] = key.status.encryption_keys(time.time())
    return comp.keyid


@pytest.mark.parametrize("algorithm,bits", [("nistp256", 256), ("nistp384", 384)])
def test_generated_key_names_its_curve_and_can_encrypt(algorithm, bits):
    key = keys.Key(openpgp.generate(f"G <g-{algorithm}@example.org>", algorithm, None, "pw"))
    st = key.status
    assert (st.algorithm, st.bits) == (f"ecdsa-{algorithm}", bits)
    assert [c.algorithm for c in st.encryption_keys(time.time())] == [f"ecdh-{algorithm}"]
    assert key.pgp.is_protected
    with key.pgp.unlocked("pw"):
        ct = message.encrypt(DATA, [(key.public(), "g")], signer=key)
        out = message.decrypt(ct, [key], signing.cert_lookup([key.public()]))
    assert out.data == DATA and [s.status for s in out.signatures] == ["valid"]


def test_pgpy_made_key_reports_curve_and_bits(nist):
    curve, key = nist
    assert (key.status.algorithm, key.status.bits) == (f"ecdsa-{curve}", NIST[curve][1])
    assert [c.algorithm for c in key.status.subkeys] == [f"ecdh-{curve}"]


def test_our_ecdsa_signature_verifies_with_pgpy(nist):
    curve, key = nist
    kid = key.require_signing_key(time.time()).keyid
    raw = key.pgp.sign_data(kid, DATA, hash_name="SHA384")
    body = P.read_packet(raw, 0)[0].body
    assert body[:4] == bytes((4, 0x00, primitives.ECDSA, 9))
    sig = pgpy.PGPSignature.from_blob(raw)
    km = key.pgp._k._key.keymaterial  # PGPy's own ECDSA verification, not keymaterial.verify
    assert km.verify(sig.hashdata(DATA), sig.__sig__, hashes.SHA384()) is True
    assert km.verify(sig.hashdata(DATA + b"!"), sig.__sig__, hashes.SHA384()) is False


def test_our_pkesk_opens_with_pgpy_and_layout(nist):
    curve, key = nist
    kid = enc_keyid(key)
    raw = key.public().pgp.encrypt_session_key(kid, 9, SESSION)
    body = P.read_packet(raw, 0)[0].body
    coord = NIST[curve][2]
    assert body[0] == 3 and body[1:9].hex().upper() == kid and body[9] == primitives.ECDH
    assert int.from_bytes(body[10:12], "big") == (2 * coord) * 8 + 3  # MPI of 0x04 || x || y
    assert body[12] == 0x04 and body[13 + 2 * coord] == len(body) - 14 - 2 * coord
    alg, session = PgpyPacket(bytearray(raw)).decrypt_sk(key.pgp._subkey(kid)._key)
    assert (int(alg), bytes(session)) == (9, SESSION)


def test_pgpy_pkesk_opens_with_ours(nist):
    _, key = nist
    kid = enc_keyid(key)
    sub = key.public().pgp._subkey(kid)
    pkesk = PKESessionKeyV3()
    pkesk.encrypter = bytearray(bytes.fromhex(kid))
    pkesk.pkalg = sub.key_algorithm
    pkesk.encrypt_sk(sub._key, SymmetricKeyAlgorithm.AES128, SESSION[:16])
    assert isinstance(key.pgp._fast(kid, key.pgp._subkey(kid), secret=True), primitives.EcdhSecret)
    assert key.pgp.decrypt_session_key(kid, bytes(pkesk)) == (7, SESSION[:16])


def test_damaged_pkesk_does_not_open(nist):
    _, key = nist
    kid = enc_keyid(key)
    raw = key.public().pgp.encrypt_session_key(kid, 9, SESSION)
    body = bytearray(P.read_packet(raw, 0)[0].body)
    assert key.pgp.decrypt_session_key(kid, raw) == (9, SESSION)
    wrapped, point_x = bytearray(body), bytearray(body)
    wrapped[-3] ^= 1
    point_x[13] ^= 1  # first octet of x: no longer a point on the curve
    for bad in (wrapped, point_x, body[:-1], body[:9] + b"\x01" + body[10:], body[:12]):
        assert key.pgp.decrypt_session_key(kid, P.write_packet(P.PKESK, bytes(bad))) is None


@pytest.mark.parametrize("curve", ["brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1"])
def test_brainpool_ecdh_and_ecdsa_round_trip(curve):
    priv = ec.generate_private_key(primitives.EC_CURVES[curve][0]())
    nums, fpr = priv.public_key().public_numbers(), bytes(range(20))
    rec = primitives.ecdh_recipient(curve, fpr, nums.x, nums.y, 10, 9)
    sec = primitives.ecdh_secret(curve, fpr, priv.private_numbers().private_value, 10, 9)
    raw = rec.encrypt_session_key(9, SESSION)
    assert sec.decrypt_session_key(P.read_packet(raw, 0)[0].body) == (9, SESSION)
    other = primitives.ecdh_secret(curve, bytes(20), priv.private_numbers().private_value, 10, 9)
    assert other.decrypt_session_key(P.read_packet(raw, 0)[0].body) is None  # Param binds the fpr
    signer = primitives.ecdsa_signer(curve, fpr, priv.private_numbers().private_value)
    assert P.read_packet(signer.sign(DATA, 0), 0)[0].body[2] == primitives.ECDSA


def test_kdf_parameters_outside_rfc6637_fall_back_to_none():
    priv = ec.generate_private_key(ec.SECP256R1())
    n = priv.public_key().public_numbers()
    assert primitives.ecdh_recipient("nistp256", bytes(20), n.x, n.y, 2, 9) is None  # SHA-1 KDF
    assert primitives.ecdh_recipient("nistp256", bytes(20), n.x, n.y, 8, 3) is None  # CAST5 KEK
    assert primitives.ecdh_recipient("secp256k1", bytes(20), n.x, n.y, 8, 7) is None


def test_secp256k1_key_refused_naming_the_curve():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = pgpy.PGPKey.new(PubKeyAlgorithm.ECDSA, EllipticCurveOID.SECP256K1)
        k.add_uid(pgpy.PGPUID.new("K <k@example.org>"), usage={KeyFlags.Sign, KeyFlags.Certify},
                  hashes=[HashAlgorithm.SHA256])
    with pytest.raises(KeyRefused, match="^secp256k1 keys are not supported$"):
        keys.load_key(bytes(k))


def test_curve_pgpy_cannot_parse_refused_naming_it():
    """An Ed448 primary (RFC 9580 keeps it for v6 keys; a v4 legacy packet here): named, refused."""
    point = b"\x40" + bytes(range(57))
    body = b"\x04" + (1700000000).to_bytes(4, "big") + bytes((22, 3)) + bytes.fromhex("2b6571") \
        + primitives.mpi(point)
    cert = P.write_packet(P.PUBKEY, body) + P.write_packet(P.UID, b"E <e@example.org>")
    [refused] = keys.load_keys(cert)
    assert isinstance(refused, KeyRefused) and str(refused) == "ed448 keys are not supported"


# --- Cv25519 session keys opened on primitives.py, against PGPy's own ECDH code ----------------
def cv25519_key() -> keys.Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
        k.add_uid(pgpy.PGPUID.new("C <cv25519@example.org>"), usage={KeyFlags.Sign, KeyFlags.Certify},
                  hashes=[HashAlgorithm.SHA256], ciphers=[SymmetricKeyAlgorithm.AES256])
        k.add_subkey(pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519),
                     usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
        return keys.load_key(bytes(k))


@pytest.fixture(scope="module")
def cv25519() -> keys.Key:
    return cv25519_key()


def test_cv25519_pkesks_of_pgpy_and_of_ours_open_on_both_paths(cv25519):
    kid = enc_keyid(cv25519)
    sub = cv25519.public().pgp._subkey(kid)
    assert isinstance(cv25519.pgp._fast(kid, cv25519.pgp._subkey(kid), secret=True), primitives.EcdhSecret)
    for sym, session in ((7, SESSION[:16]), (8, SESSION[:24]), (9, SESSION)):
        theirs = PKESessionKeyV3()
        theirs.encrypter = bytearray(bytes.fromhex(kid))
        theirs.pkalg = sub.key_algorithm
        theirs.encrypt_sk(sub._key, SymmetricKeyAlgorithm(sym), session)
        ours = cv25519.public().pgp.encrypt_session_key(kid, sym, session)
        for raw in (bytes(theirs), ours):
            assert cv25519.pgp.decrypt_session_key(kid, raw) == (sym, session)
            alg, key = PgpyPacket(bytearray(raw)).decrypt_sk(cv25519.pgp._subkey(kid)._key)
            assert (int(alg), bytes(key)) == (sym, session)


def test_a_damaged_or_foreign_cv25519_pkesk_does_not_open(cv25519):
    kid = enc_keyid(cv25519)
    raw = cv25519.public().pgp.encrypt_session_key(kid, 9, SESSION)
    body = bytes(P.read_packet(raw, 0)[0].body)
    assert body[12] == 0x40 and int.from_bytes(body[10:12], "big") == 263   # MPI of 0x40 || x
    flipped, prefix, small_order = bytearray(body), bytearray(body), bytearray(body)
    flipped[-3] ^= 1
    prefix[12] = 0x04
    small_order[13:45] = bytes(32)          # the point 0: its shared secret would be all zeros
    for bad in (flipped, prefix, small_order, body[:-1], body[:9] + b"\x01" + body[10:], body[:30]):
        assert cv25519.pgp.decrypt_session_key(kid, P.write_packet(P.PKESK, bytes(bad))) is None
    other = cv25519_key()
    other_kid = enc_keyid(other)
    assert other.pgp.decrypt_session_key(other_kid, raw) is None   # another key, same shape
