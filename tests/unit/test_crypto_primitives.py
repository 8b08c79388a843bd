"""primitives.py: signatures and PKESKs built without PGPy, checked by PGPy, gpg, sqop and us.

The interop tests (tests/interop) go through the same path end to end with all
four peers; here each packet is also taken apart byte by byte, the edge cases
(an MPI with leading zero octets, a naive datetime, a locked key) are forced,
and the key types primitives.py does not cover are shown to still work via PGPy.
"""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timezone

import pytest

from securemail.crypto import docsig, keys, message, openpgp, primitives
from securemail.crypto import packets as P
from securemail.errors import PassphraseError
from tests.interop.peers import available_peers, make_peer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (EllipticCurveOID, HashAlgorithm, KeyFlags, PubKeyAlgorithm,
                                SymmetricKeyAlgorithm)

PEERS = [p for p in ("gpg", "sqop") if p in available_peers()]
needs_peers = pytest.mark.skipif(not PEERS, reason="neither gpg nor sqop installed")
DATA = b"Vertraulich\r\nline two\n\x00\xff" + bytes(range(256)) * 8
PW = "correct horse"


@pytest.fixture(scope="module")
def ed():
    return keys.Key(openpgp.generate("Eda <eda@example.org>", "ed25519", None, None))


@pytest.fixture(scope="module")
def rsa():
    return keys.Key(openpgp.generate("Rasmus <rasmus@example.org>", "rsa3072", None, None))


@pytest.fixture(scope="module", params=PEERS)
def peer(request):
    with make_peer(request.param) as p:
        yield p


def signing_keyid(key: keys.Key) -> str:
    return key.require_signing_key(time.time()).keyid


def sign(key: keys.Key, data: bytes = DATA, **kw) -> bytes:
    return key.pgp.sign_data(signing_keyid(key), data, **kw)


def subpackets(area: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(area):
        n, pos = area[pos], pos + 1   # all ours are one-octet lengths
        out.append((area[pos], area[pos + 1:pos + n]))
        pos += n
    return out


def split_signature(raw: bytes) -> dict:
    body = P.read_packet(raw, 0)[0].body
    hlen = int.from_bytes(body[4:6], "big")
    ulen = int.from_bytes(body[6 + hlen:8 + hlen], "big")
    rest = body[8 + hlen + ulen:]
    mpis, pos = [], 2
    while pos < len(rest):
        bits = int.from_bytes(rest[pos:pos + 2], "big")
        mpis.append((bits, rest[pos + 2:pos + 2 + (bits + 7) // 8]))
        pos += 2 + (bits + 7) // 8
    assert pos == len(rest), "MPIs do not fill the packet"
    return {"head": body[:4], "hashed": subpackets(body[6:6 + hlen]),
            "unhashed": subpackets(body[8 + hlen:8 + hlen + ulen]), "left16": rest[:2],
            "mpis": mpis, "trailer_len": 6 + hlen}


def pgpy_verifies(key: keys.Key, data: bytes, raw: bytes) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cert, _ = pgpy.PGPKey.from_blob(key.public().armored())
        result = cert.verify(data, pgpy.PGPSignature.from_blob(raw))
        return any(s.issues == 0 for s in result.good_signatures)


def ours_verifies(key: keys.Key, data: bytes, raw: bytes) -> bool:
    lookup = lambda kid, fpr: key.public() if kid in key.keyids else None  # noqa: E731
    return [r.status for r in message.verify_signatures(data, [raw], lookup)] == ["valid"]


# --- encodings -------------------------------------------------------------------------------
@pytest.mark.parametrize("value,mpi", [
    (b"", b"\x00\x00"), (b"\x00\x00", b"\x00\x00"), (b"\x01", b"\x00\x01\x01"),
    (b"\x00\x80\x00", b"\x00\x10\x80\x00"), (b"\x00\x00\x7f\xff", b"\x00\x0f\x7f\xff"),
    (b"\x40" + bytes(32), b"\x01\x07\x40" + bytes(32))])
def test_mpi_strips_leading_zero_octets(value, mpi):
    assert primitives.mpi(value) == mpi


def test_naive_datetime_is_utc():
    aware = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert primitives.timestamp(aware, time.time) == primitives.timestamp(
        aware.replace(tzinfo=None), time.time) == int(aware.timestamp())
    assert primitives.timestamp(None, lambda: 1234.9) == 1234


def test_signer_refuses_mismatched_key(ed):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    with pytest.raises(ValueError):
        primitives.Signer(1, bytes(20), ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        primitives.Signer(22, bytes(8), ed25519.Ed25519PrivateKey.generate())


# --- signatures ------------------------------------------------------------------------------
@pytest.mark.parametrize("which,algo,bits", [("ed", 22, None), ("rsa", 1, 3072)])
def test_signature_layout(which, algo, bits, request):
    key = request.getfixturevalue(which)
    kid = signing_keyid(key)
    fpr = next(c.fingerprint for c in (key.status.primary, *key.status.subkeys) if c.keyid == kid)
    t = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    s = split_signature(sign(key, created=t))
    assert s["head"] == bytes([4, 0x00, algo, 10])      # v4, binary document, SHA-512
    assert s["hashed"] == [(2, int(t.timestamp()).to_bytes(4, "big")),
                           (33, b"\x04" + bytes.fromhex(fpr))]
    assert s["unhashed"] == [(16, bytes.fromhex(kid))]
    assert len(s["mpis"]) == (2 if algo == 22 else 1)
    if bits:
        assert 3064 < s["mpis"][0][0] <= bits


@pytest.mark.parametrize("which", ["ed", "rsa"])
def test_signature_verifies_with_pgpy_and_us(which, request):
    key = request.getfixturevalue(which)
    raw = sign(key)
    assert pgpy_verifies(key, DATA, raw) and ours_verifies(key, DATA, raw)
    assert not pgpy_verifies(key, DATA + b"!", raw) and not ours_verifies(key, DATA + b"!", raw)
    parsed = docsig.parse(raw)
    assert parsed.hash_name == "SHA512" and parsed.issuer_keyid == signing_keyid(key)


@pytest.mark.parametrize("which", ["ed", "rsa"])
def test_signing_does_not_build_pgpy_signatures(which, request, monkeypatch):
    key = request.getfixturevalue(which)

    def refuse(*a, **kw):
        raise AssertionError("PGPy signature object built on the fast path")
    monkeypatch.setattr(pgpy.PGPSignature, "new", refuse)
    assert ours_verifies(key, DATA, sign(key))
    assert isinstance(key.pgp._fast(signing_keyid(key), None, secret=True), primitives.Signer)


@pytest.mark.parametrize("hash_name", ["SHA256", "SHA384", "SHA224"])
def test_other_hashes(ed, hash_name):
    raw = sign(ed, hash_name=hash_name)
    assert docsig.parse(raw).hash_name == hash_name
    assert pgpy_verifies(ed, DATA, raw) and ours_verifies(ed, DATA, raw)


def short_mpi_signature(key: keys.Key) -> tuple[bytes, bytes]:
    """(data, signature) whose EdDSA R or S has a leading zero octet (about 1 in 128 tries)."""
    for i in range(5000):
        data = b"leading zero %d" % i
        raw = sign(key, data)
        if any(len(v) < 32 for _, v in split_signature(raw)["mpis"]):
            return data, raw
    raise AssertionError("no short MPI in 5000 signatures")


def test_short_eddsa_mpi_verifies_with_pgpy_and_us(ed):
    data, raw = short_mpi_signature(ed)
    assert pgpy_verifies(ed, data, raw) and ours_verifies(ed, data, raw)


def test_locked_key_cannot_sign_and_forgets_its_signer():
    key = keys.Key(openpgp.generate("Pat <pat@example.org>", "ed25519", None, PW))
    with pytest.raises(PassphraseError):
        sign(key)
    with key.pgp.unlocked(PW):
        assert ours_verifies(key, DATA, sign(key))
        assert any(secret for _, secret in key.pgp._privcache)
    assert not any(secret for _, secret in key.pgp._privcache)
    with pytest.raises(PassphraseError):
        sign(key)


@needs_peers
@pytest.mark.parametrize("which", ["ed", "rsa"])
def test_peer_verifies_signature(which, request, peer):
    key = request.getfixturevalue(which)
    verifications = peer.verify(DATA, sign(key), [key.public().armored()])
    assert any(key.fingerprint in v for v in verifications), verifications


@needs_peers
def test_peer_verifies_short_eddsa_mpi(ed, peer):
    data, raw = short_mpi_signature(ed)
    assert peer.verify(data, raw, [ed.public().armored()])


# --- session keys ------------------------------------------------------------------------------
def test_cv25519_pkesk_layout(ed):
    comp = ed.require_encryption_keys(time.time())[0]
    raw = ed.public().pgp.encrypt_session_key(comp.keyid, 9, bytes(range(32)))
    body = P.read_packet(raw, 0)[0].body
    assert body[:10] == b"\x03" + bytes.fromhex(comp.keyid) + b"\x12"
    assert body[10:13] == b"\x01\x07\x40"            # 263-bit MPI, native point prefix
    assert body[45] == 48 and len(body) == 46 + 48   # 35 octets padded to 40, wrapped: +8
    assert isinstance(ed.public().pgp._fast(comp.keyid, None, secret=False), primitives.Recipient)
    assert ed.pgp.decrypt_session_key(comp.keyid, raw) == (9, bytes(range(32)))


def test_rsa_pkesk_decrypts_here(rsa):
    comp = rsa.require_encryption_keys(time.time())[0]
    raw = rsa.public().pgp.encrypt_session_key(comp.keyid, 9, bytes(range(32)))
    assert P.read_packet(raw, 0)[0].body[9] == 1
    with rsa.pgp.unlocked(None):
        assert rsa.pgp.decrypt_session_key(comp.keyid, raw) == (9, bytes(range(32)))


@pytest.mark.parametrize("which", ["ed", "rsa"])
def test_encrypt_sign_round_trip_here(which, request):
    key = request.getfixturevalue(which)
    ct = message.encrypt(DATA, [(key.public(), "x@example.org")], signer=key)
    lookup = lambda kid, fpr: key.public()  # noqa: E731
    with key.pgp.unlocked(None):
        out = message.decrypt(ct, [key], lookup)
    assert out.data == DATA and [s.status for s in out.signatures] == ["valid"]


@needs_peers
@pytest.mark.parametrize("which", ["ed", "rsa"])
def test_peer_decrypts_and_verifies(which, request, peer):
    key = request.getfixturevalue(which)
    ct = message.encrypt(DATA, [(key.public(), "x@example.org")], signer=key)
    out = peer.decrypt(ct, [key.armored()], verify_certs=[key.public().armored()])
    assert out.plaintext == DATA and out.verifications


@needs_peers
def test_encrypt_to_peer_generated_cv25519(ed, peer):
    """Their Cv25519 subkey (their KDF parameters, their fingerprint in the KDF) decrypts ours."""
    their_key = peer.generate_key("Peer <peer@example.org>", "ed25519")
    cert = keys.load_key(peer.extract_cert(their_key))
    ct = message.encrypt(DATA, [(cert, "peer@example.org")], signer=ed)
    out = peer.decrypt(ct, [their_key], verify_certs=[ed.public().armored()])
    assert out.plaintext == DATA and out.verifications


# --- NIST curves (issue 15: now on primitives.py too; tests/unit/test_crypto_curves.py) --------
@pytest.fixture(scope="module")
def nist():
    """ECDSA P-256 primary and ECDH P-256 subkey, made by PGPy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = pgpy.PGPKey.new(PubKeyAlgorithm.ECDSA, EllipticCurveOID.NIST_P256)
        sub = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.NIST_P256)
        k.add_uid(pgpy.PGPUID.new("Nina <nina@example.org>"), usage={KeyFlags.Sign, KeyFlags.Certify},
                  hashes=[HashAlgorithm.SHA256], ciphers=[SymmetricKeyAlgorithm.AES256])
        k.add_subkey(sub, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
        return keys.load_key(bytes(k))


@pytest.mark.filterwarnings("ignore:Selected hash")
def test_nist_keys_sign_and_encrypt_via_primitives(nist, ed):
    kid = signing_keyid(nist)
    assert nist.pgp._fast(kid, nist.pgp._subkey(kid), secret=True).algo == primitives.ECDSA
    ct = message.encrypt(DATA, [(ed.public(), "eda@example.org")], signer=nist)
    out = message.decrypt(ct, [ed], lambda k, fpr: nist.public())
    assert out.data == DATA and [s.status for s in out.signatures] == ["valid"]
    sub = nist.status.subkeys[0].keyid   # ECDH P-256
    assert [c.keyid for c in nist.status.encryption_keys(time.time())] == [sub]
    raw = nist.public().pgp.encrypt_session_key(sub, 9, bytes(range(32)))
    assert isinstance(nist.public().pgp._fast(sub, None, secret=False), primitives.Recipient)
    assert nist.pgp.decrypt_session_key(sub, raw) == (9, bytes(range(32)))
