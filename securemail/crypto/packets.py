"""OpenPGP packet framing (RFC 4880 §4, RFC 9580 §4): read and write packet headers, no crypto.

Used to inspect a message *before* any decryption (which packets, in which
order) and to build messages packet by packet. Pure Python, no PGPy: PGPy's
parser accepts too much and raises too many exception types.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LimitExceeded, MalformedMessage

# Packet tags used here.
PKESK, SIG, SKESK, OPS, SECKEY, PUBKEY, SECSUBKEY, COMPRESSED, SED, MARKER, LITERAL, \
    TRUST, UID, PUBSUBKEY, UAT, SEIPD, MDC, AEAD, PADDING = \
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 20, 21

NAMES = {1: "PKESK", 2: "signature", 3: "SKESK", 4: "one-pass signature", 5: "secret key",
         6: "public key", 7: "secret subkey", 8: "compressed data", 9: "SED (no integrity)",
         10: "marker", 11: "literal data", 12: "trust", 13: "user ID", 14: "public subkey",
         17: "user attribute", 18: "SEIPD", 19: "MDC", 20: "AEAD", 21: "padding"}

MAX_PACKETS = 100_000


class Packet:
    """One packet: its tag, its body, and ``raw`` (header + body exactly as read, for PGPy and
    re-serialisation), cut from the data it was read from only when asked: a 35 MB encrypted
    data packet is then held once, as its body, not twice."""

    __slots__ = ("tag", "body", "_data", "_start", "_end")

    def __init__(self, tag: int, body: bytes, data: bytes, start: int, end: int) -> None:
        self.tag, self.body, self._data, self._start, self._end = tag, body, data, start, end

    @property
    def raw(self) -> bytes:
        return bytes(self._data[self._start:self._end])

    @property
    def name(self) -> str:
        return NAMES.get(self.tag, f"unknown packet {self.tag}")

    def __eq__(self, other) -> bool:
        return isinstance(other, Packet) and (self.tag, self.body, self.raw) == (other.tag, other.body, other.raw)

    def __hash__(self) -> int:
        return hash((self.tag, self.body))

    def __repr__(self) -> str:
        return f"Packet({self.name}, {len(self.body)} bytes)"


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise MalformedMessage("truncated OpenPGP packet")


def _new_length(data: bytes, pos: int) -> tuple[int, int, bool]:
    """Return (length, header bytes used, is_partial) of a new-format length."""
    _need(data, pos, 1)
    o = data[pos]
    if o < 192:
        return o, 1, False
    if o < 224:
        _need(data, pos, 2)
        return ((o - 192) << 8) + data[pos + 1] + 192, 2, False
    if o == 255:
        _need(data, pos, 5)
        return int.from_bytes(data[pos + 1:pos + 5], "big"), 5, False
    return 1 << (o & 0x1F), 1, True


def read_packet(data: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    """Read one packet at ``pos``; return it and the position after it. From a memoryview, the
    body is a view of ``data`` unless it came in partial pieces."""
    start = pos
    _need(data, pos, 1)
    ctb = data[pos]
    pos += 1
    if not ctb & 0x80:
        raise MalformedMessage("not an OpenPGP packet")
    if ctb & 0x40:  # new format
        tag = ctb & 0x3F
        chunks = []
        while True:
            length, used, partial = _new_length(data, pos)
            pos += used
            _need(data, pos, length)
            chunks.append(data[pos:pos + length])
            pos += length
            if not partial:
                break
            if len(chunks) > MAX_PACKETS:
                raise LimitExceeded("too many partial body chunks")
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    else:  # old format
        tag = (ctb >> 2) & 0x0F
        ltype = ctb & 0x03
        if ltype == 3:  # indeterminate: to the end of the data
            body = data[pos:]
            pos = len(data)
        else:
            n = (1, 2, 4)[ltype]
            _need(data, pos, n)
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
            _need(data, pos, length)
            body = data[pos:pos + length]
            pos += length
    if tag == 0:
        raise MalformedMessage("reserved OpenPGP packet tag 0")
    # read from a memoryview, a body in one piece stays a view of it: a 36 MB packet is not copied
    return Packet(tag, body if isinstance(body, memoryview) else bytes(body), data, start, pos), pos


def read_packets(data: bytes, *, max_packets: int = MAX_PACKETS) -> list[Packet]:
    """Split ``data`` into its top-level packets."""
    out: list[Packet] = []
    pos = 0
    while pos < len(data):
        pkt, pos = read_packet(data, pos)
        out.append(pkt)
        if len(out) > max_packets:
            raise LimitExceeded("too many OpenPGP packets")
    if not out:
        raise MalformedMessage("empty OpenPGP data")
    return out


def packet_header(tag: int, n: int) -> bytes:
    """The new-format header of a packet whose body is ``n`` bytes (definite length)."""
    if n < 192:
        hdr = bytes([n])
    elif n < 8384:
        hdr = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        hdr = b"\xff" + n.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + hdr


def write_packet(tag: int, body: bytes) -> bytes:
    """Serialise one new-format packet with a definite length."""
    return packet_header(tag, len(body)) + body


def each_subpacket(subpackets: bytes):
    """(type octet, body) of each signature subpacket (RFC 4880 §5.2.3.1) in ``subpackets``, in
    order; MalformedMessage at the first one whose length is zero or runs past the end."""
    pos, end = 0, len(subpackets)
    while pos < end:
        first = subpackets[pos]
        if first < 192:
            length, pos = first, pos + 1
        elif first < 255:
            second = subpackets[pos + 1] if pos + 1 < end else 0
            length, pos = ((first - 192) << 8) + second + 192, pos + 2
        else:
            length, pos = int.from_bytes(subpackets[pos + 1:pos + 5], "big"), pos + 5
        if length == 0 or pos + length > end:
            raise MalformedMessage("broken signature subpacket")
        yield subpackets[pos], subpackets[pos + 1:pos + length]
        pos += length


def issuer_keyid(subpackets: bytes) -> bytes | None:
    """The issuer key ID (subpacket 16) or the last 8 bytes of the issuer fingerprint (33); the
    subpackets before a broken one count."""
    found = None
    try:
        for kind, data in each_subpacket(subpackets):
            if kind & 0x7F == 16 and len(data) == 8:
                return data
            if kind & 0x7F == 33 and len(data) == 21:
                found = data[-8:]
    except MalformedMessage:
        pass
    return found


# --- message shape -----------------------------------------------------------
@dataclass(frozen=True)
class EncryptedShape:
    """A message that passed the pre-decryption check: ESKs then one SEIPD v1."""
    pkesks: tuple[Packet, ...]
    skesks: tuple[Packet, ...]
    seipd: Packet

    @property
    def recipient_keyids(self) -> tuple[str, ...]:
        """Key IDs (hex, upper) named by the PKESKs; '0000000000000000' is a hidden recipient."""
        return tuple(p.body[1:9].hex().upper() for p in self.pkesks if len(p.body) > 9 and p.body[0] == 3)


def describe(packets: list[Packet]) -> str:
    return ", ".join(p.name for p in packets[:6]) + (", ..." if len(packets) > 6 else "")


def check_encrypted(data: bytes) -> EncryptedShape:
    """The packet check done *before* any decryption.

    Only PKESK/SKESK packets followed by exactly one integrity-protected SEIPD
    (version 1) packet are accepted. SED without MDC (EFAIL), a literal or
    compressed packet posing as encrypted, signatures alone, AEAD packets we
    cannot check, trailing data: all refused with a reason.
    """
    from ..errors import IntegrityError, NotEncrypted
    packets = [p for p in read_packets(data) if p.tag not in (MARKER, PADDING)]
    esks = []
    i = 0
    while i < len(packets) and packets[i].tag in (PKESK, SKESK):
        esks.append(packets[i])
        i += 1
    rest = packets[i:]
    if not esks:
        if any(p.tag == SED for p in rest):
            raise IntegrityError("encrypted without integrity protection (no MDC); refused")
        raise NotEncrypted(f"not an encrypted OpenPGP message ({describe(packets)})")
    if not rest:
        raise MalformedMessage("encrypted message has no encrypted data packet")
    if rest[0].tag == SED:
        raise IntegrityError("encrypted without integrity protection (no MDC); refused")
    if rest[0].tag == AEAD:
        raise NotEncrypted("AEAD-encrypted data (OpenPGP v5) is not supported")
    if rest[0].tag != SEIPD:
        raise NotEncrypted(f"not an encrypted OpenPGP message ({describe(packets)})")
    if len(rest) != 1:
        raise MalformedMessage("data after the encrypted data packet")
    seipd = rest[0]
    if not seipd.body or seipd.body[0] != 1:
        raise NotEncrypted("unsupported SEIPD version")
    return EncryptedShape(tuple(p for p in esks if p.tag == PKESK),
                          tuple(p for p in esks if p.tag == SKESK), seipd)
