"""ASCII armor (RFC 4880 §6, RFC 9580 §6.2): encode and decode, with a C-speed CRC-24.

PGPy computes the armor checksum in pure Python (~0.5 s per MiB); anycrc does it
in C. The decoder is strict: one armored block, known label, valid base64 and a
checksum that matches when present. Every failure is a MalformedMessage.
"""

from __future__ import annotations

import base64
import binascii
import io
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


_LINE_IN = 48                     # input bytes per 64-character line
_BLOCK_LINES = 1024
_BLOCK = struct.Struct("64s" * _BLOCK_LINES)  # one compiled format, not one per message size


def armor(data: bytes, label: str = "PGP MESSAGE", checksum: bool = True) -> bytes:
    """Armor ``data``; lines of 64 base64 characters, CRLF-free output."""
    return armor_parts([data], label, checksum)


def armor_parts(parts, label: str = "PGP MESSAGE", checksum: bool = True) -> bytes:
    """Armor the concatenation of ``parts`` without joining them: the output is the only
    whole-size object made (a 25 MB message: one 34 MB result, 64 KiB blocks meanwhile)."""
    if label not in LABELS:
        raise ValueError(f"unknown armor label {label!r}")
    out = io.BytesIO()
    out.write(f"-----BEGIN {label}-----\n\n".encode())
    crc, carry = None, b""
    for part in parts:
        view = memoryview(part)
        crc = _CRC24.calc(view, crc)
        if carry:  # top the carried bytes up to a whole line from this part
            take = _LINE_IN - len(carry)
            carry += bytes(view[:take])
            view = view[take:]
            if len(carry) < _LINE_IN:
                continue
            _lines(out, carry)
            carry = b""
        whole = len(view) // _LINE_IN * _LINE_IN
        _lines(out, view[:whole])
        carry = bytes(view[whole:])
    if carry:
        out.write(binascii.b2a_base64(carry))
    if checksum:
        out.write(b"=" + base64.b64encode((crc or 0).to_bytes(3, "big")) + b"\n")
    out.write(f"-----END {label}-----\n".encode())
    return out.getvalue()


def _lines(out: io.BytesIO, data) -> None:
    """Whole 48-byte lines of ``data`` as base64 lines, a block of 1024 lines at a time."""
    step = _LINE_IN * _BLOCK_LINES
    for i in range(0, len(data), step):
        b64 = binascii.b2a_base64(data[i:i + step], newline=False)
        lines = _BLOCK.unpack(b64) if len(b64) == _BLOCK.size else [b64[j:j + 64] for j in range(0, len(b64), 64)]
        out.write(b"\n".join(lines))
        out.write(b"\n")


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
