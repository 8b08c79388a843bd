"""Merging two copies of one certificate: new user IDs, subkeys, signatures and revocations.

Done at the packet level (no PGPy): components are matched by identity (user
ID bytes, subkey fingerprint), signatures are unioned by their exact bytes, and
a secret key packet is kept over its public twin. Validity is then decided
again by keys.evaluate on the result.
"""

from __future__ import annotations

import hashlib

from ..errors import KeyRefused, MalformedMessage
from . import packets as P

_MPIS = {1: 2, 2: 2, 3: 2, 16: 3, 17: 4}  # RSA, Elgamal, DSA: number of public MPIs


def _mpi_end(body: bytes, pos: int) -> int:
    if pos + 2 > len(body):
        raise MalformedMessage("truncated key packet")
    bits = int.from_bytes(body[pos:pos + 2], "big")
    return pos + 2 + (bits + 7) // 8


def public_body(body: bytes) -> bytes:
    """The public part of a v4 key packet body (public or secret)."""
    if not body or body[0] != 4:
        raise KeyRefused("only version 4 keys are supported")
    algo, pos = body[5], 6
    if algo in _MPIS:
        for _ in range(_MPIS[algo]):
            pos = _mpi_end(body, pos)
    elif algo in (18, 19, 22):  # ECDH, ECDSA, EdDSA: curve OID then a point
        pos = _mpi_end(body, pos + 1 + body[pos])
        if algo == 18:  # KDF parameters
            pos += 1 + body[pos]
    else:
        raise KeyRefused(f"unsupported public-key algorithm {algo}")
    if pos > len(body):
        raise MalformedMessage("truncated key packet")
    return body[:pos]


def fingerprint(body: bytes) -> str:
    pub = public_body(body)
    return hashlib.sha1(b"\x99" + len(pub).to_bytes(2, "big") + pub).hexdigest().upper()


class _Cert:
    def __init__(self, binary: bytes) -> None:
        pkts = [p for p in P.read_packets(binary) if p.tag != P.TRUST]
        if not pkts or pkts[0].tag not in (P.PUBKEY, P.SECKEY):
            raise KeyRefused("not a key")
        if sum(1 for p in pkts if p.tag in (P.PUBKEY, P.SECKEY)) != 1:
            raise KeyRefused("expected exactly one primary key")
        self.primary = pkts[0]
        self.direct: list[bytes] = []
        self.uids: dict[tuple[int, bytes], tuple[P.Packet, list[bytes]]] = {}
        self.subkeys: dict[str, tuple[P.Packet, list[bytes]]] = {}
        current: list[bytes] = self.direct
        for p in pkts[1:]:
            if p.tag in (P.UID, P.UAT):
                current = self.uids.setdefault((p.tag, p.body), (p, []))[1]
            elif p.tag in (P.PUBSUBKEY, P.SECSUBKEY):
                current = self.subkeys.setdefault(fingerprint(p.body), (p, []))[1]
            elif p.tag == P.SIG:
                if p.raw not in current:
                    current.append(p.raw)
            # anything else (marker, unknown) is dropped

    @property
    def fpr(self) -> str:
        return fingerprint(self.primary.body)

    def absorb(self, other: "_Cert") -> None:
        if other.fpr != self.fpr:
            raise KeyRefused("cannot merge two different keys")
        if other.primary.tag == P.SECKEY:
            self.primary = other.primary
        self.direct += [s for s in other.direct if s not in self.direct]
        for k, (pkt, sigs) in other.uids.items():
            mine = self.uids.setdefault(k, (pkt, []))[1]
            mine += [s for s in sigs if s not in mine]
        for k, (pkt, sigs) in other.subkeys.items():
            old = self.subkeys.get(k)
            if old is None or (pkt.tag == P.SECSUBKEY and old[0].tag != P.SECSUBKEY):
                self.subkeys[k] = (pkt, (old[1] if old else []))
            mine = self.subkeys[k][1]
            mine += [s for s in sigs if s not in mine]

    def serialize(self) -> bytes:
        out = [self.primary.raw, *self.direct]
        for pkt, sigs in self.uids.values():
            out += [pkt.raw, *sigs]
        for pkt, sigs in self.subkeys.values():
            out += [pkt.raw, *sigs]
        return b"".join(out)


def merge(old: bytes, new: bytes) -> bytes:
    """``old`` with everything ``new`` adds (both binary, same primary key)."""
    cert = _Cert(old)
    cert.absorb(_Cert(new))
    return cert.serialize()


def add_signature(binary: bytes, sig_packet: bytes) -> bytes:
    """Attach a key-level signature (e.g. a revocation) after the primary key packet."""
    cert = _Cert(binary)
    if sig_packet not in cert.direct:
        cert.direct.append(sig_packet)
    return cert.serialize()
