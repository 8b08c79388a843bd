"""Self-check of the interop harness: each peer talks to each other one, byte-exact, naming signers.

For every ordered pair (A, B) of different peers: A encrypts and signs binary
literal data with CRLF, NUL and high bytes, B decrypts it byte for byte and
names A's fingerprint; A signs, B verifies; A clear-signs, B verifies. Known
peer bugs (``QUIRK_*`` in peers.py) are checked to be exactly what they were,
then reported as xfail: a peer that gets fixed fails its test until the quirk goes.
"""

from __future__ import annotations

import re
from itertools import permutations

import pytest

from .peers import (PEERS, QUIRK_CLEARSIGN_STRAY_CR, QUIRK_DECRYPT_AS_TEXT, QUIRK_EXIT_99,
                    QUIRK_SIGNER_IS_PRIMARY, PeerFailure, Unsupported, available_peers,
                    primary_key_packet)

PAIRS = [pytest.param(a, b, id=f"{a}-to-{b}") for a, b in permutations(PEERS, 2)]
SOP_PEERS = [name for name in PEERS if name != "gpg"]
SIGNS_WITH_SUBKEY = {"sqop", "pgpainless"}  # their keys have a separate signing subkey

TEXT = b"Hello across implementations.\nA second line.\n"
DATA = b"Subject: x\r\n\r\nline one\r\n\x00\xff\xfe binary\r\n.\r\nFrom me\r\n \r\n"
DATA_AS_TEXT = b"Subject: x\n\nline one\n\x00\xef\xbf\xbd binary\n.\nFrom me\n \n"
VERIFICATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [0-9A-F]{40} [0-9A-F]{40}( .*)?$")
# Public key algorithm octet and, for RSA, modulus bits of the primary key.
ALGO_SHAPE = {"ed25519": (22, None), "rsa2048": (1, 2048), "rsa3072": (1, 3072)}


def assert_names_signer(verifications: list[str], fpr: str) -> None:
    """Every verification line is well-formed and one names ``fpr`` as the primary key."""
    for line in verifications:
        assert VERIFICATION.match(line), f"malformed verification {line!r}"
    assert any(line.split()[2] == fpr for line in verifications), (verifications, fpr)


def expect_quirk(got: bytes, got_with_quirk: bytes, reason: str) -> None:
    """The output is wrong in exactly the known way: report an xfail."""
    assert got == got_with_quirk, f"quirk gone or changed ({reason}): update peers.py"
    pytest.xfail(reason)


def stranger(peer_pool, name: str):
    """A key no test gave ``name``: made by sqop when installed (10 ms), else by ``name``."""
    return peer_pool.identity("sqop" if "sqop" in available_peers() else name, tag="stranger")


def test_generate_key_and_self_roundtrip(peer, peer_pool):
    for algo in peer.key_algos:
        me = peer_pool.identity(peer.name, algo)
        assert me.key.startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")
        assert me.cert.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
        assert b"PRIVATE" not in me.cert
        body = primary_key_packet(me.cert)
        want_algo, want_bits = ALGO_SHAPE[algo]
        assert body[5] == want_algo
        if want_bits:
            assert int.from_bytes(body[6:8], "big") == want_bits
        signature = peer.sign(TEXT, [me.key], armor=False)
        assert not signature.startswith(b"-----")
        assert_names_signer(peer.verify(TEXT, signature, [me.cert]), me.fpr)
    with pytest.raises(Unsupported):
        peer.generate_key("Nobody <nobody@interop.example>", "no-such-algo")


@pytest.mark.parametrize("a,b", PAIRS)
def test_encrypt_sign_then_decrypt_verify(a, b, peer_pool):
    alice, bob = peer_pool.identity(a), peer_pool.identity(b)
    ciphertext = peer_pool.get(a).encrypt(DATA, [bob.cert], signers=[alice.key])
    assert ciphertext.startswith(b"-----BEGIN PGP MESSAGE-----")
    out = peer_pool.get(b).decrypt(ciphertext, [bob.key], verify_certs=[alice.cert])
    assert_names_signer(out.verifications, alice.fpr)
    if QUIRK_DECRYPT_AS_TEXT in peer_pool.get(b).quirks:
        expect_quirk(out.plaintext, DATA_AS_TEXT, f"{b} decrypt mangles binary data as text")
    assert out.plaintext == DATA


@pytest.mark.parametrize("a,b", PAIRS)
def test_detached_sign_then_verify(a, b, peer_pool):
    alice = peer_pool.identity(a)
    signature = peer_pool.get(a).sign(DATA, [alice.key])
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----")
    verifications = peer_pool.get(b).verify(DATA, signature, [alice.cert])
    assert_names_signer(verifications, alice.fpr)
    if a in SIGNS_WITH_SUBKEY:  # the signing-key field names the subkey, but not with gosop
        names_primary = QUIRK_SIGNER_IS_PRIMARY in peer_pool.get(b).quirks
        assert all((line.split()[1] == alice.fpr) == names_primary for line in verifications)


@pytest.mark.parametrize("a,b", PAIRS)
def test_clearsign_then_inline_verify(a, b, peer_pool):
    alice = peer_pool.identity(a)
    signed = peer_pool.get(a).inline_sign(TEXT, [alice.key], mode="clearsigned")
    assert signed.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    if QUIRK_CLEARSIGN_STRAY_CR in peer_pool.get(a).quirks:
        assert b"\n\r\n-----BEGIN PGP SIGNATURE-----" in signed
    out = peer_pool.get(b).inline_verify(signed, [alice.cert])
    assert_names_signer(out.verifications, alice.fpr)
    # The cleartext framework keeps neither CRLF vs LF nor the last line break exactly:
    # pgpainless hands back no final LF, gpg and sqop do (and the stray CR line above).
    assert out.plaintext.replace(b"\r\n", b"\n").rstrip(b"\n") == TEXT.rstrip(b"\n")


def test_decrypt_with_the_wrong_key_fails_with_29(peer, peer_pool):
    me, other = peer_pool.identity(peer.name), stranger(peer_pool, peer.name)
    ciphertext = peer.encrypt(TEXT, [me.cert])
    with pytest.raises(PeerFailure) as failure:
        peer.decrypt(ciphertext, [other.key])
    assert failure.value.sop_code == (99 if QUIRK_EXIT_99 in peer.quirks else 29)


def test_signature_by_an_unlisted_cert_fails_with_3(peer, peer_pool):
    me, other = peer_pool.identity(peer.name), stranger(peer_pool, peer.name)
    with pytest.raises(PeerFailure) as failure:
        peer.verify(TEXT, peer.sign(TEXT, [me.key]), [other.cert])
    assert failure.value.sop_code == 3
    # decrypt --verify-with withholds the plaintext when nothing verifies.
    ciphertext = peer.encrypt(TEXT, [me.cert], signers=[me.key])
    with pytest.raises(PeerFailure) as failure:
        peer.decrypt(ciphertext, [me.key], verify_certs=[other.cert])
    assert failure.value.sop_code == (99 if QUIRK_EXIT_99 in peer.quirks else 3)


@pytest.mark.parametrize("b", SOP_PEERS)
def test_gpg_rsa3072_key_with_sop_peer(b, peer_pool):
    """Unarmored both ways: b encrypts and signs to gpg's RSA key; gpg signs for b to verify."""
    gpg, sop = peer_pool.get("gpg"), peer_pool.get(b)
    rsa, them = peer_pool.identity("gpg", "rsa3072"), peer_pool.identity(b)
    ciphertext = sop.encrypt(TEXT, [rsa.cert], signers=[them.key], armor=False)
    out = gpg.decrypt(ciphertext, [rsa.key], verify_certs=[them.cert])
    assert out.plaintext == TEXT
    assert_names_signer(out.verifications, them.fpr)
    signature = gpg.sign(DATA, [rsa.key], armor=False)
    assert_names_signer(sop.verify(DATA, signature, [rsa.cert]), rsa.fpr)
