"""RSA keys made here have p < q (RFC 4880 §5.5.3; GnuPG fails about 1% of decryptions otherwise),
so generation swaps OpenSSL's p > q and computes u again. The new u can take a byte more or less
than the one PGPy had counted into the packet's length: about 1 key in 25 then did not parse and
`keys generate --algorithm rsa3072` failed (a fresh-clone CI run met it). ``openpgp.p_below_q``
counts the length again; here u is made one byte long first, so the length must change."""

from __future__ import annotations

import warnings

import pgpy
from pgpy.constants import KeyFlags, PubKeyAlgorithm

from securemail.crypto import openpgp
from securemail.errors import KeyRefused


def rsa_key_with_a_short_u():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 2048)
        key.add_uid(pgpy.PGPUID.new("T <t@example.gov>"), usage={KeyFlags.Sign, KeyFlags.Certify})
    km = key._key.keymaterial
    if int(km.p) < int(km.q):   # as OpenSSL gives them: p > q
        km.p, km.q = km.q, km.p
    km.u = type(km.p)(1)
    km._compute_chksum()
    key._key.update_hlen()      # the packet's length counted with a one-byte u
    return key, km


def counted_right(packet) -> bool:
    """The length in the packet's header is the length of the body it serialises."""
    return packet.header.length == len(packet.__bytearray__()) - len(packet.header)


def test_swapping_p_and_q_counts_the_packet_again_and_the_key_parses():
    key, km = rsa_key_with_a_short_u()
    openpgp.p_below_q(key)
    assert int(km.p) < int(km.q) and int(km.u) == pow(int(km.p), -1, int(km.q))
    assert counted_right(key._key)
    parsed = openpgp.parse_keys(bytes(key))
    assert len(parsed) == 1 and not isinstance(parsed[0], KeyRefused)


def test_the_swap_alone_leaves_the_length_wrong():
    from securemail.crypto import keymaterial
    key, km = rsa_key_with_a_short_u()
    keymaterial.rsa_p_below_q(km)                        # what generation did before the fix
    assert int(km.p) < int(km.q) and not counted_right(key._key)
