"""ASCII armor (RFC 4880 §6, RFC 9580 §6.2): encode and decode, with a C-speed CRC-24.

PGPy computes the armor checksum in pure Python (~0.5 s per MiB); anycrc does it
in C. The decoder is strict: one armored block, known label, valid base64 and a
checksum that matches when present. Every failure is a MalformedMessage.
"""

from __future__ import annotations

import base64
import binascii
import re

import anycrc

from ..errors import MalformedMessage

_CRC24 = anycrc.Model("CRC24-OPENPGP")

LABELS = ("PGP MESSAGE", "PGP PUBLIC KEY BLOCK", "PGP PRIVATE KEY BLOCK", "PGP SIGNATURE")

_BEGIN = re.compile(rb"^-----BEGIN (PGP [A-Z ,/0-9]+)-----[ \t]*\r?$", re.M)
_HEADER = re.compile(rb"^[A-Za-z0-9-]+: ")


def crc24(data: bytes) -> int:
    return _CRC24.calc(data)


def is_armored(data: bytes) -> bool:
    return data.lstrip()[:15] == b"-----BEGIN PGP "


def armor(data: bytes, label: str = "PGP MESSAGE", checksum: bool = True) -> bytes:
    """Armor ``data``; lines of 64 base64 characters, CRLF-free output."""
    if label not in LABELS:
        raise ValueError(f"unknown armor label {label!r}")
    b64 = base64.b64encode(data)
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    out = [f"-----BEGIN {label}-----".encode(), b"", *lines]
    if checksum:
        out.append(b"=" + base64.b64encode(crc24(data).to_bytes(3, "big")))
    out.append(f"-----END {label}-----".encode())
    return b"\n".join(out) + b"\n"


def dearmor(data: bytes, *, max_size: int | None = None) -> tuple[str, bytes]:
    """Decode the first armored block of ``data``; return (label, binary).

    Text before the block is ignored (as in inline PGP); text after it too.
    """
    m = _BEGIN.search(data)
    if not m:
        raise MalformedMessage("no OpenPGP armor found")
    label = m.group(1).decode("ascii")
    if label not in LABELS and not label.startswith("PGP MESSAGE, PART"):
        raise MalformedMessage("unknown OpenPGP armor type")
    end_marker = f"-----END {label}-----".encode()
    end = data.find(end_marker, m.end())
    if end < 0:
        raise MalformedMessage("OpenPGP armor has no END line")
    lines = data[m.end():end].splitlines()
    i = 1 if lines and not lines[0].strip() else 0  # the rest of the BEGIN line
    # Skip armor headers (Version:, Comment:, ...).
    while i < len(lines) and _HEADER.match(lines[i].lstrip()):
        i += 1
    body: list[bytes] = []
    checksum: bytes | None = None
    for line in lines[i:]:
        line = line.strip()
        if not line:
            continue
        if line.startswith(b"=") and len(line) == 5:
            checksum = line[1:]
            continue
        if checksum is not None:
            raise MalformedMessage("OpenPGP armor has data after its checksum")
        body.append(line)
    joined = b"".join(body)
    if max_size is not None and len(joined) * 3 // 4 > max_size:
        from ..errors import LimitExceeded
        raise LimitExceeded("OpenPGP message too large")
    try:
        binary = base64.b64decode(joined, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("OpenPGP armor is not valid base64") from None
    if checksum is not None:
        try:
            want = int.from_bytes(base64.b64decode(checksum, validate=True), "big")
        except (binascii.Error, ValueError):
            raise MalformedMessage("OpenPGP armor checksum is not valid base64") from None
        if crc24(binary) != want:
            raise MalformedMessage("OpenPGP armor checksum does not match")
    if not binary:
        raise MalformedMessage("OpenPGP armor is empty")
    return label, binary


def unarmor_if_needed(data: bytes, **kw) -> bytes:
    """Binary OpenPGP data as is; armored data decoded."""
    if is_armored(data):
        return dearmor(data, **kw)[1]
    return data
