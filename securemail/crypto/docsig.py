"""Document signatures (RFC 4880 §5.2.3, types 0x00 and 0x01) read without PGPy.

Every signed message read parses its signature packets here, and openpgp.py checks them with
the signer's `cryptography` key (primitives.Verifier, for every key type keys.py accepts) over
``digest``: one pass of hashlib over the data, in place. PGPy's parse built a dozen objects per
signature and its check copied the data with the trailer appended (a 34 MB copy for a 25 MiB
attachment); the two took a third of the bridge's reading time for a 4 KiB message.

Read as PGPy read them, so that what a reader is told does not change: a v4 packet; the creation
time from the last hashed subpacket 2 (none: unreadable); the issuer key ID from the last
subpacket 16, hashed or not, and the issuer fingerprint from the first subpacket 33. Two
differences: a signature naming its issuer by fingerprint alone (RFC 9580 lets it omit the key
ID) is now readable, its key ID being the fingerprint's last 8 bytes; and a signature's own
expiration time (hashed subpacket 3), which PGPy left unread, is read (message.verify_signatures:
a signature read after it is invalid, as gpg calls it expired). Nothing here is trusted because
of where it sits: the issuer only says which key to try, and the key, its validity at the
creation time and the hash are judged by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import LimitExceeded, MalformedMessage
from . import packets as P
from . import primitives as _prim

HASH_NAMES = {1: "MD5", 2: "SHA1", 3: "RIPEMD160", 8: "SHA256", 9: "SHA384", 10: "SHA512",
              11: "SHA224"}   # PGPy's HashAlgorithm: another hash made a signature unreadable
_LINE_END = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class SignaturePacket:
    """A parsed v4 signature: who issued it, when, with what hash, and what it signed."""
    issuer_keyid: str
    issuer_fpr: str | None
    created: float
    hash_name: str
    type: int
    pk_algo: int = 0
    hashed: bytes = field(default=b"", repr=False)   # version .. hashed subpackets: what the trailer covers
    values: tuple[bytes, ...] = field(default=(), repr=False)  # the algorithm's MPIs, as octet strings
    expires: float | None = None   # when its hashed expiration time (subpacket 3) ends it, if it has one


def parse(raw: bytes) -> SignaturePacket:
    """The signature packet at the start of ``raw``; MalformedMessage when it cannot be read."""
    try:
        pkt, _ = P.read_packet(raw, 0)
        if pkt.tag != P.SIG:
            raise MalformedMessage("not a signature packet")
        return _fields(pkt.body)
    except (MalformedMessage, LimitExceeded, IndexError, ValueError):
        raise MalformedMessage("unreadable OpenPGP signature") from None


def _fields(body: bytes) -> SignaturePacket:
    if len(body) < 6 or body[0] != 4 or body[3] not in HASH_NAMES:
        raise MalformedMessage("not a v4 signature with a known hash")
    end_hashed = 6 + int.from_bytes(body[4:6], "big")
    end_unhashed = end_hashed + 2 + int.from_bytes(body[end_hashed:end_hashed + 2], "big")
    if end_unhashed + 2 > len(body):
        raise MalformedMessage("truncated signature")
    hashed = list(P.each_subpacket(body[6:end_hashed]))
    unhashed = list(P.each_subpacket(body[end_hashed + 2:end_unhashed]))
    created = [d for k, d in hashed if k & 0x7F == 2 and len(d) == 4]
    if not created:
        raise MalformedMessage("no creation time")
    fprs = [d[1:] for k, d in hashed + unhashed if k & 0x7F == 33 and len(d) > 1]
    keyids = [d for k, d in hashed + unhashed if k & 0x7F == 16 and len(d) == 8]
    if not keyids and fprs and len(fprs[0]) == 20:
        keyids = [fprs[0][-8:]]
    if not keyids:
        raise MalformedMessage("no issuer")
    when = float(int.from_bytes(created[-1], "big"))
    lifetime = [int.from_bytes(d, "big") for k, d in hashed if k & 0x7F == 3 and len(d) == 4]
    return SignaturePacket(keyids[-1].hex().upper(), fprs[0].hex().upper() if fprs else None,
                           when, HASH_NAMES[body[3]], body[1], body[2], body[:end_hashed],
                           _mpis(body, end_unhashed + 2),
                           when + lifetime[-1] if lifetime and lifetime[-1] else None)


def _mpis(body: bytes, pos: int) -> tuple[bytes, ...]:
    out = []
    while pos < len(body):
        if pos + 2 > len(body):
            raise MalformedMessage("truncated MPI")
        n = (int.from_bytes(body[pos:pos + 2], "big") + 7) // 8
        if pos + 2 + n > len(body):
            raise MalformedMessage("truncated MPI")
        out.append(body[pos + 2:pos + 2 + n])
        pos += 2 + n
    if not out:
        raise MalformedMessage("a signature without values")
    return tuple(out)


def digest(sig: SignaturePacket, data: bytes) -> bytes:
    """The hash the signer signed (RFC 4880 §5.2.4): the data (a text signature's line ends made
    CRLF, as PGPy made them), the hashed part, the v4 trailer. ``sig.hash_name`` must be one of
    primitives.SIGNATURE_HASHES."""
    h = _prim.SIGNATURE_HASHES[sig.hash_name][1](_LINE_END.sub(b"\r\n", data) if sig.type == 0x01 else data)
    h.update(sig.hashed)
    h.update(b"\x04\xff" + len(sig.hashed).to_bytes(4, "big"))
    return h.digest()
