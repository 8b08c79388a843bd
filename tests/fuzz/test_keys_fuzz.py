"""Fuzzing key import: crypto.keys.load_keys on mutated real keys.

The seeds are real certificates and a secret key made by gpg and sqop (the
shared corpus, when present) and by securemail itself. They are mutated byte by
byte (armored and binary) and packet by packet (dropped, duplicated, reordered,
retagged, bodies replaced, packets moved between keys). load_keys may refuse,
but only with a SecureMailError, within the deadline; whatever it accepts is a
validated key with a fingerprint and a state.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto import armor as A
from securemail.crypto import openpgp
from securemail.crypto import packets as P
from securemail.crypto.keys import Key, load_keys
from securemail.errors import KeyRefused
from tests.conftest import CORPUS

from . import fuzz, only_ours


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Binary transferable keys: the corpus's (gpg, sqop; RSA and Ed25519; one revoked, one secret) and ours."""
    out = [openpgp.generate("Fuzz <fuzz@interieur.gouv.fr>", "ed25519", None, None).binary()]
    for path in sorted((CORPUS / "keys").glob("*.asc")) if (CORPUS / "keys").is_dir() else []:
        out.append(A.dearmor(path.read_bytes())[1])
    return tuple(out)


def packets_of(data: bytes) -> list[bytes]:
    return [p.raw for p in P.read_packets(data)]


@st.composite
def byte_mutant(draw) -> bytes:
    data = draw(st.sampled_from(seeds()))
    if draw(st.booleans()):
        data = A.armor(data, "PGP PUBLIC KEY BLOCK")
    at = draw(st.integers(0, len(data) - 1))
    how = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
    if how == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    if how == "truncate":
        return data[:at]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if how == "delete":
        return data[:at] + data[at + draw(st.integers(1, 16)):]
    return data[:at] + bytes([draw(st.sampled_from([0x00, 0xFF, 0x80, 0x7F, 0xC0]))]) + data[at + 1:]


@st.composite
def packet_mutant(draw) -> bytes:
    pkts = packets_of(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(pkts) - 1))
        how = draw(st.sampled_from(["drop", "dup", "swap", "retag", "body", "foreign", "concat"]))
        if how == "drop" and len(pkts) > 1:
            pkts.pop(i)
        elif how == "dup":
            pkts.insert(i, pkts[i] * draw(st.integers(1, 4)))
        elif how == "swap":
            j = draw(st.integers(0, len(pkts) - 1))
            pkts[i], pkts[j] = pkts[j], pkts[i]
        elif how == "retag":
            tag = draw(st.sampled_from([P.PUBKEY, P.SECKEY, P.PUBSUBKEY, P.SECSUBKEY, P.UID, P.UAT, P.SIG,
                                        P.TRUST, P.LITERAL, 60]))
            pkts[i] = P.write_packet(tag, P.read_packet(pkts[i], 0)[0].body)
        elif how == "body":
            tag = P.read_packet(pkts[i], 0)[0].tag
            pkts[i] = P.write_packet(tag, draw(st.binary(max_size=300)))
        elif how == "foreign":
            pkts.insert(i, draw(st.sampled_from(packets_of(draw(st.sampled_from(seeds()))))))
        else:
            pkts.append(draw(st.sampled_from(seeds())))
    return b"".join(pkts)


def accepted_are_valid(items) -> None:
    for item in items or ():
        assert isinstance(item, (Key, KeyRefused)), type(item)
        if isinstance(item, Key):
            assert len(item.fingerprint) in (40, 64) and item.fingerprint.isalnum()
            assert item.state_at(0) in ("valid", "expired", "revoked")
            assert item.status.uids, "a key without a valid user ID was accepted"


def test_the_seeds_load():
    for seed in seeds():
        items = load_keys(seed)
        assert items and all(isinstance(i, Key) for i in items), items


@fuzz(300)
@given(byte_mutant())
def test_byte_mutated_keys_raise_only_securemail_errors(data):
    accepted_are_valid(only_ours(load_keys, data))


@fuzz(200)
@given(packet_mutant())
def test_packet_mutated_keys_raise_only_securemail_errors(data):
    accepted_are_valid(only_ours(load_keys, data))
