"""docsig.py and primitives.Verifier: document signatures read and checked without PGPy.

Held to PGPy, which read and checked them before: the same fields and the same verdict on
signatures made by us (Ed25519, RSA, ECDSA on NIST P-256), by gpg and sqop (binary and text
signatures) and on thousands of bent copies, where a verdict of "valid" must also mean that
nothing the signature covers was changed. The one intended difference (an issuer named by
fingerprint alone) is shown too.
"""

from __future__ import annotations

import functools
import random
import time
import warnings

import pytest

from securemail.crypto import docsig, keys, message, openpgp, primitives
from securemail.crypto import packets as P
from securemail.errors import MalformedMessage
from tests.interop.peers import available_peers, make_peer
from tests.unit.test_crypto_curves import pgpy_key

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    
DATA = b"Note au ministre\r\nligne deux\n\x00\xff" * 40
PEERS = [p for p in ("gpg", "sqop") if p in available_peers()]


@pytest.fixture(scope="module")
def ours() -> dict[str, keys.Key]:
    return {"ed25519": keys.Key(openpgp.generate("Eda <eda@example.org>", "ed25519", None, None)),
            "rsa": keys.Key(openpgp.generate("Rasmus <rasmus@example.org>", "rsa3072", None, None)),
            "nistp256": pgpy_key("nistp256")}


def signing_keyid(key: keys.Key) -> str:
    return key.require_signing_key(time.time()).keyid


def pgpy_reading(raw: bytes):
    """What PGPy read of a signature: (issuer key ID, fingerprint, created, hash, type), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sig = pgpy.PGPSignature.from_blob(raw)
            fpr = sig.signer_fingerprint
            return (str(sig.signer).upper(), str(fpr).replace(" ", "").upper() if fpr else None,
                    sig.created.timestamp(), sig.hash_algorithm.name, int(sig.type))
    except Exception:  # noqa: BLE001
        return None


@functools.lru_cache(maxsize=8)
def pgpy_cert(armored: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pgpy.PGPKey.from_blob(armored)[0]


def pgpy_verdict(key: keys.Key, data: bytes, raw: bytes) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cert = pgpy_cert(key.public().armored())
            return any(s.issues == 0 for s in cert.verify(data, pgpy.PGPSignature.from_blob(raw)).good_signatures)
    except Exception:  # noqa: BLE001
        return False


def our_verdict(key: keys.Key, data: bytes, raw: bytes) -> str:
    lookup = lambda kid, fpr: key.public() if kid in key.keyids else None  # noqa: E731
    return message.verify_signatures(data, [raw], lookup)[0].status


def reading(sp: docsig.SignaturePacket):
    return sp.issuer_keyid, sp.issuer_fpr, sp.created, sp.hash_name, sp.type


@pytest.mark.filterwarnings("ignore:Selected hash")
@pytest.mark.parametrize("which", ["ed25519", "rsa", "nistp256"])
@pytest.mark.parametrize("hash_name", ["SHA512", "SHA256"])
def test_our_signatures_read_and_checked_as_pgpy_did(ours, which, hash_name):
    key = ours[which]
    raw = key.pgp.sign_data(signing_keyid(key), DATA, hash_name=hash_name)
    assert reading(docsig.parse(raw)) == pgpy_reading(raw)
    assert pgpy_verdict(key, DATA, raw) and our_verdict(key, DATA, raw) == "valid"
    assert not pgpy_verdict(key, DATA + b"!", raw) and our_verdict(key, DATA + b"!", raw) == "invalid"
    # the check ran on cryptography, with the key built once
    assert isinstance(key.public().pgp._verifiers[signing_keyid(key).upper()], primitives.Verifier)


@pytest.fixture(scope="module", params=PEERS)
def peer_signed(request):
    """(their certificate, data, [binary signature, text signature]) made by gpg or sqop."""
    with make_peer(request.param) as peer:
        secret = peer.generate_key("Pia <pia@example.org>")
        sigs = [peer.sign(DATA, [secret], armor=False), peer.sign(DATA, [secret], as_text=True, armor=False)]
        yield keys.load_key(peer.extract_cert(secret)), sigs


@pytest.mark.skipif(not PEERS, reason="neither gpg nor sqop installed")
def test_peer_signatures_read_and_checked_as_pgpy_did(peer_signed):
    cert, sigs = peer_signed
    assert [docsig.parse(s).type for s in sigs] == [0x00, 0x01]
    for raw in sigs:
        assert reading(docsig.parse(raw)) == pgpy_reading(raw)
        assert our_verdict(cert, DATA, raw) == "valid" and pgpy_verdict(cert, DATA, raw)
        assert our_verdict(cert, DATA.replace(b"deux", b"DEUX"), raw) == "invalid"
    # a text signature covers the text with CRLF line ends, however it comes
    assert our_verdict(cert, DATA.replace(b"\r\n", b"\n"), sigs[1]) == "valid"
    assert our_verdict(cert, DATA.replace(b"\r\n", b"\n"), sigs[0]) == "invalid"


def covered(sp: docsig.SignaturePacket) -> tuple:
    """What a signature covers or carries besides its unhashed area: the hashed part and the
    values as numbers (an MPI's bit count may be bent without changing its octets)."""
    return sp.hashed, tuple(int.from_bytes(v, "big") for v in sp.values)


@pytest.mark.parametrize("which", ["ed25519", "rsa"])
def test_bent_signatures_never_valid_unless_only_the_unhashed_area_moved(ours, which):
    key = ours[which]
    raw = key.pgp.sign_data(signing_keyid(key), DATA)
    original = covered(docsig.parse(raw))
    rng, verdicts = random.Random(7), set()
    for i in range(1500):
        bent = bytearray(raw)
        for _ in range(rng.choice((1, 1, 2, 4))):
            pos = rng.randrange(len(bent))
            bent[pos] = rng.randrange(256) if i % 2 else bent[pos] ^ (1 << rng.randrange(8))
        bent = bytes(bent)
        try:
            docsig.parse(bent)
        except MalformedMessage:
            assert our_verdict(key, DATA, bent) == "invalid"
            verdicts.add("unreadable")
            continue
        verdict = our_verdict(key, DATA, bent)
        verdicts.add(verdict)
        if verdict == "valid":
            assert covered(docsig.parse(bent)) == original
        elif pgpy_verdict(key, DATA, bent):
            pytest.fail(f"PGPy found valid what we did not: {bent.hex()}")
    assert verdicts >= {"unreadable", "invalid", "valid"}, verdicts


def _resign_unhashed(raw: bytes, unhashed: bytes) -> bytes:
    body = P.read_packet(raw, 0)[0].body
    end = 6 + int.from_bytes(body[4:6], "big")
    uend = end + 2 + int.from_bytes(body[end:end + 2], "big")
    return P.write_packet(P.SIG, body[:end] + len(unhashed).to_bytes(2, "big") + unhashed + body[uend:])


def test_issuer_by_fingerprint_alone_is_readable(ours):
    """RFC 9580 lets a signature name its issuer by fingerprint only; PGPy could not read it."""
    key = ours["ed25519"]
    raw = _resign_unhashed(key.pgp.sign_data(signing_keyid(key), DATA), b"")
    assert pgpy_reading(raw) is None
    sp = docsig.parse(raw)
    assert sp.issuer_keyid == signing_keyid(key).upper() and sp.issuer_fpr.endswith(sp.issuer_keyid)
    assert our_verdict(key, DATA, raw) == "valid"


@pytest.mark.parametrize("bend,why", [
    (lambda b: b"\x03" + b[1:], "v3"),
    (lambda b: b[:4] + b"\x63" + b[5:], "unknown hash"),
    (lambda b: b[:-3], "truncated values"),
])
def test_unreadable_signatures(ours, bend, why):
    raw = ours["ed25519"].pgp.sign_data(signing_keyid(ours["ed25519"]), DATA)
    body = P.read_packet(raw, 0)[0].body
    with pytest.raises(MalformedMessage):
        docsig.parse(P.write_packet(P.SIG, bend(body)))


def test_no_creation_time_is_unreadable(ours):
    key = ours["ed25519"]
    body = P.read_packet(key.pgp.sign_data(signing_keyid(key), DATA), 0)[0].body
    hashed = b"\x16\x21\x04" + bytes(20)     # the fingerprint subpacket only
    bent = P.write_packet(P.SIG, body[:4] + len(hashed).to_bytes(2, "big") + hashed
                          + body[6 + int.from_bytes(body[4:6], "big"):])
    assert pgpy_reading(bent) is None
    with pytest.raises(MalformedMessage):
        docsig.parse(bent)


def test_verifier_refuses_values_of_the_wrong_shape(ours):
    key = ours["ed25519"]
    raw = key.pgp.sign_data(signing_keyid(key), DATA)
    sp = docsig.parse(raw)
    check = key.pgp._verifiers.get(signing_keyid(key).upper()) or primitives.Verifier(
        22, key.public().pgp._subkey(signing_keyid(key))._key.keymaterial.__pubkey__())
    digest = docsig.digest(sp, DATA)
    assert check.verify(digest, sp.hash_name, sp.pk_algo, sp.values)
    assert not check.verify(digest, sp.hash_name, 1, sp.values)                      # another algorithm
    assert not check.verify(digest, sp.hash_name, sp.pk_algo, sp.values[:1])          # one value
    assert not check.verify(digest, sp.hash_name, sp.pk_algo, (b"\x01" + sp.values[0], sp.values[1]))
    assert not check.verify(digest[:-1] + bytes([digest[-1] ^ 1]), sp.hash_name, sp.pk_algo, sp.values)


def test_a_signature_read_after_its_own_expiration_is_invalid(ours):
    """A signature's hashed expiration time (subpacket 3), made here by PGPy: read after it, the
    signature is invalid ("signature expired", as gpg says); before it, valid. PGPy's reading
    ignored it."""
    from datetime import timedelta
    key = ours["ed25519"]
    kid = signing_keyid(key)
    theirs = key.pgp._k if key.pgp._k.fingerprint.keyid == kid else key.pgp._k.subkeys[kid]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        short = bytes(theirs.sign(DATA, expires=timedelta(seconds=1)))
        long = bytes(theirs.sign(DATA, expires=timedelta(days=1)))
    assert docsig.parse(short).expires == docsig.parse(short).created + 1
    assert docsig.parse(key.pgp.sign_data(kid, DATA)).expires is None   # ours carry none
    time.sleep(2.1)
    lookup = lambda k, fpr: key.public() if k in key.keyids else None  # noqa: E731
    results = message.verify_signatures(DATA, [short, long], lookup)
    assert [(r.status, r.reason) for r in results] == [("invalid", "signature expired"), ("valid", "")]
    assert pgpy_verdict(key, DATA, short)   # what PGPy said of it
