"""Certificate framing before PGPy sees a key: split key blocks, enforce limits, drop others' certifications.

No PGPy here: hostile key data (10,000 user IDs, 100 KB user IDs, thousands of
signatures, garbage) is refused on packet framing alone, quickly and with a
one-line reason, before any signature is verified.
"""

from __future__ import annotations

import re

from ..errors import KeyRefused, MalformedMessage
from . import armor as _armor
from . import packets as P
from .merge import fingerprint as fingerprint_of

MAX_KEY_BYTES = 1 << 20
MAX_USER_IDS = 100
MAX_USER_ID_BYTES = 2048        # as gpg
MAX_SIGNATURES = 256            # per certificate, after third-party certifications are dropped
_BLOCK = re.compile(rb"-----BEGIN PGP [A-Z ]+-----.*?-----END PGP [A-Z ]+-----", re.S)


def split_certificates(data: bytes) -> list[list[P.Packet] | KeyRefused]:
    """Each transferable key's packets (trust packets dropped), or a KeyRefused in its place."""
    if len(data) > MAX_KEY_BYTES:
        raise KeyRefused("key data too large")
    if b"-----BEGIN PGP" in data:
        blocks = _BLOCK.findall(data)
        if not blocks:
            raise KeyRefused("no OpenPGP key found")
        binary = b"".join(_armor.dearmor(b)[1] for b in blocks)
    else:
        binary = data
    try:
        packets = P.read_packets(binary)
    except MalformedMessage as e:
        raise KeyRefused(f"not OpenPGP key data ({e.message})") from None
    groups: list[list[P.Packet]] = []
    for pkt in packets:
        if pkt.tag in (P.PUBKEY, P.SECKEY):
            groups.append([pkt])
        elif groups:
            groups[-1].append(pkt)
        else:
            raise KeyRefused("key data does not start with a primary key")
    return [_checked(g) for g in groups]


def _checked(g: list[P.Packet]) -> list[P.Packet] | KeyRefused:
    uids = sum(1 for p in g if p.tag == P.UID)
    if uids > MAX_USER_IDS:
        return KeyRefused(f"key has {uids} user IDs (limit {MAX_USER_IDS})")
    if any(p.tag == P.UID and len(p.body) > MAX_USER_ID_BYTES for p in g):
        return KeyRefused(f"key has a user ID longer than {MAX_USER_ID_BYTES} bytes")
    g = [p for p in _own_signatures_only(g) if p.tag != P.TRUST]
    sigs = sum(1 for p in g if p.tag == P.SIG)
    if sigs > MAX_SIGNATURES:
        return KeyRefused(f"key has {sigs} self-signatures (limit {MAX_SIGNATURES})")
    return g


def _own_signatures_only(group: list[P.Packet]) -> list[P.Packet]:
    """Drop certifications by other keys (we never use them: validity is self-signatures only).

    Each signature costs a verification; a key flooded with others' certifications
    would otherwise be slow to load, and could never be refused for it.
    """
    primary = group[0]
    try:
        own = bytes.fromhex(fingerprint_of(primary.body))[-8:]
    except Exception:  # noqa: BLE001 - unparseable key packets are PGPy's to refuse
        return group
    out = []
    for p in group:
        if p.tag == P.SIG and len(p.body) > 6 and p.body[0] == 4 and 0x10 <= p.body[1] <= 0x13:
            hashed = int.from_bytes(p.body[4:6], "big")
            issuer = P.issuer_keyid(p.body[6:6 + hashed]) or P.issuer_keyid(p.body[8 + hashed:])
            if issuer is not None and issuer != own:
                continue
        out.append(p)
    return out
