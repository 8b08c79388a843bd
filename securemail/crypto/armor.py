"""ASCII armor (RFC 4880 §6, RFC 9580 §6.2): encode and decode, with a C-speed CRC-24.

PGPy computes the armor checksum in pure Python (~0.5 s per MiB); anycrc does it
in C. The decoder is strict: one armored block, known label, valid base64 and a
checksum that matches when present. Every failure is a MalformedMessage.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

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
    b64 = binascii.b2a_base64(data, newline=False)
    n = len(b64) // 64
    lines = list(struct.unpack_from("64s" * n, b64)) if n else []
    if len(b64) % 64:
        lines.append(b64[n * 64:])
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
    region = data[m.end():end]
    pos = region.find(b"\n") + 1  # the rest of the BEGIN line
    while True:  # armor headers (Version:, Comment:, ...) up to the blank line
        nl = region.find(b"\n", pos)
        line = region[pos:nl if nl >= 0 else len(region)]
        if nl < 0 or not _HEADER.match(line.lstrip()):
            break
        pos = nl + 1
    body = region[pos:].rstrip()
    checksum: bytes | None = None
    last_nl = body.rfind(b"\n")
    last = body[last_nl + 1:].strip()
    if last.startswith(b"=") and len(last) == 5:
        checksum, body = last[1:], body[:last_nl + 1]
    inner = body.find(b"\n=") + 1 or (1 if body.lstrip().startswith(b"=") else 0)
    if inner and body[inner:].strip().find(b"\n") >= 0:  # a "=XXXX" line with data after it
        raise MalformedMessage("OpenPGP armor has data after its checksum")
    joined = body.translate(None, b" \t\r\n")
    if max_size is not None and len(joined) * 3 // 4 > max_size:
        from ..errors import LimitExceeded
        raise LimitExceeded("OpenPGP message too large")
    try:
        binary = binascii.a2b_base64(joined, strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("OpenPGP armor is not valid base64") from None
    if checksum is not None:
        try:
            want = int.from_bytes(binascii.a2b_base64(checksum, strict_mode=True), "big")
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
