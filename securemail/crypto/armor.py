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
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")   # what bytes.rstrip() strips
_DECODE_STEP = 1 << 20            # armored bytes decoded at a time


def crc24(data: bytes) -> int:
    return _CRC24.calc(data)


_ARMORED = re.compile(rb"[ \t\n\r\x0b\x0c]*-----BEGIN PGP ")   # what bytes.lstrip() strips, then BEGIN


def is_armored(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Does ``data[start:end]`` begin, after blanks, with an armor BEGIN line? (Read in place.)"""
    return _ARMORED.match(data, start, len(data) if end is None else end) is not None


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


def dearmor(data: bytes, *, max_size: int | None = None, start: int = 0,
            end: int | None = None, buffer: bool = False, over: bool = False) -> tuple[str, bytes]:
    """Decode the first armored block of ``data[start:end]``; return (label, binary).

    Text before the block is ignored (as in inline PGP); text after it too. The block is read
    in place, by offsets (``start`` and ``end`` too: a part of a message is not copied out of
    it), and decoded in pieces of ``_DECODE_STEP``: a 49 MB armored message costs its binary
    and one piece, not four copies of itself. ``over`` (``data`` a bytearray the caller gives
    up): the binary is decoded over the armor and ``data`` itself, cut to it, is returned: the
    message's memory holds its binary, and nothing more is allocated than a piece.
    """
    if start and data[start - 1:start] != b"\n":   # the BEGIN line's "^" is read at a line start
        data, start, end = data[start:end], 0, None
    stop = len(data) if end is None else end
    m = _BEGIN.search(data, start, stop)
    if not m:
        raise MalformedMessage("no OpenPGP armor found")
    label = m.group(1).decode("ascii")
    if label not in LABELS and not label.startswith("PGP MESSAGE, PART"):
        raise MalformedMessage("unknown OpenPGP armor type")
    end = data.find(f"-----END {label}-----".encode(), m.end(), stop)
    if end < 0:
        raise MalformedMessage("OpenPGP armor has no END line")
    start, stop, checksum = _body(data, m.end(), end)
    if max_size is not None:   # refused for that before the size is counted, as always
        _refuse_data_after_checksum(data, start, stop)
    if over and isinstance(data, bytearray) and max_size is None:
        binary = _decode_over(data, start, stop)
    else:
        try:
            binary = _decode(data, start, stop, max_size, buffer)
        except MalformedMessage:   # strict base64 refuses it too; named here, at no cost to good armor
            _refuse_data_after_checksum(data, start, stop)
            raise
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


def _body(data: bytes, begin: int, end: int) -> tuple[int, int, bytes | None]:
    """(start, stop) of the base64 between the BEGIN line's end and the END line, armor headers
    and the checksum line left out, and the checksum (without its ``=``), if one."""
    nl = data.find(b"\n", begin, end)
    pos = nl + 1 if nl >= 0 else begin   # the rest of the BEGIN line
    while True:  # armor headers (Version:, Comment:, ...) up to the blank line
        nl = data.find(b"\n", pos, end)
        if nl < 0 or not _HEADER.match(data[pos:nl].lstrip()):
            break
        pos = nl + 1
    stop = end
    while stop > pos and data[stop - 1] in _WHITESPACE:
        stop -= 1
    checksum = None
    last_nl = data.rfind(b"\n", pos, stop)
    first = last_nl + 1 if last_nl >= 0 else pos
    last = data[first:stop].strip() if stop - first <= 4096 else b""
    if last.startswith(b"=") and len(last) == 5:
        checksum, stop = last[1:], (last_nl + 1 if last_nl >= 0 else pos)
    return pos, stop, checksum


def _refuse_data_after_checksum(data: bytes, pos: int, stop: int, first_line: bool = True) -> None:
    """MalformedMessage when a line of the base64 (``data[pos:stop]``, the checksum line left
    out) begins with ``=`` and data follows it: a checksum line with more armor after it. Only
    looked for when decoding failed (strict base64 refuses such data: ``=`` is padding, and
    nothing may follow padding) or before a size is counted: a scan of the whole armor saved.
    ``first_line``: ``pos`` is where the base64 begins (its first line may begin with ``=``)."""
    found = data.find(b"\n=", pos, stop)
    inner = found + 1 if found >= 0 else (pos + 1 if first_line and data[pos:pos + 64].lstrip().startswith(b"=") else 0)
    if inner and data[inner:stop].strip().find(b"\n") >= 0:  # a "=XXXX" line with data after it
        raise MalformedMessage("OpenPGP armor has data after its checksum")


def _decode(data: bytes, start: int, stop: int, max_size: int | None, buffer: bool = False) -> bytes:
    """Strict base64 of ``data[start:stop]``, blanks and line ends skipped, piece by piece.
    ``buffer``: armor of more than one piece is decoded into one bytearray, sized for it before
    the first piece, instead of pieces joined at the end (for a moment, twice the binary)."""
    if max_size is not None:   # the decoded size, known before decoding (blanks counted in place)
        blanks = sum(data.count(c, start, stop) for c in (b" ", b"\t", b"\r", b"\n"))
        if (stop - start - blanks) * 3 // 4 > max_size:
            from ..errors import LimitExceeded
            raise LimitExceeded("OpenPGP message too large")
    out: list[bytes] = []
    whole = bytearray((stop - start) * 3 // 4 + 3) if buffer and stop - start > _DECODE_STEP else None
    at, carry, padded = 0, b"", False
    for pos in range(start, stop, _DECODE_STEP):
        piece = carry + data[pos:min(stop, pos + _DECODE_STEP)].translate(None, b" \t\r\n")
        decoded, carry, now_padded = _step(piece, padded, pos + _DECODE_STEP >= stop)
        padded = padded or now_padded   # padding ends the base64, however many blanks follow
        if whole is None:
            out.append(decoded)
        else:   # at most 3 bytes for 4 of armor: it fits (a slice assignment would grow it if not)
            whole[at:at + len(decoded)] = decoded
            at += len(decoded)
    if whole is not None:
        del whole[at:]
        return whole
    return out[0] if len(out) == 1 else b"".join(out)


def _step(piece: bytes, padded: bool, last: bool) -> tuple[bytes, bytes, bool]:
    """One piece of armor, blanks removed, after a carried remainder: (its binary, the remainder
    carried to the next piece, whether padding ended it). Strict: base64 after padding that ended
    an earlier piece (``padded``) is refused, as it would be in one piece."""
    if padded and piece:
        raise MalformedMessage("OpenPGP armor is not valid base64")
    cut = len(piece) if last else len(piece) - len(piece) % 4
    try:
        decoded = binascii.a2b_base64(memoryview(piece)[:cut], strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("OpenPGP armor is not valid base64") from None
    return decoded, piece[cut:], piece.find(b"=", 0, cut) >= 0


def _decode_over(data: bytearray, start: int, stop: int) -> bytearray:
    """``_decode`` written over ``data`` from ``start``: 4 bytes of armor give at most 3, so the
    writing can stay behind the reading. It stays behind the earliest input a refusal may have to
    read again (``_refuse_data_after_checksum``, to name it as ``_decode``'s caller does): the
    piece before the one being read, a piece whose ``=`` ended the good base64, and the piece a
    carried remainder came from. ``data``, cut to the binary, is returned."""
    written, carry, padded, queue = start, b"", None, []
    before, carried = start, None   # the piece before this one; where the carried remainder began
    for pos in range(start, stop, _DECODE_STEP):
        piece = carry + data[pos:min(stop, pos + _DECODE_STEP)].translate(None, b" \t\r\n")   # bytes
        keep = min(p for p in (before, carried, padded) if p is not None)   # read again if refused
        try:
            decoded, rest, now_padded = _step(piece, padded is not None, pos + _DECODE_STEP >= stop)
        except MalformedMessage:
            _refuse_data_after_checksum(data, keep - 8 if keep > start + 8 else start, stop,
                                        first_line=keep <= start + 8)
            raise
        if now_padded and padded is None:
            padded = pos if not carry or carried is None else carried
        carried = (carried if carry else pos) if rest else None
        carry, before = rest, pos
        queue.append(decoded)
        keep = min(p for p in (before, carried, padded) if p is not None)
        while queue and written + len(queue[0]) <= keep - 8:   # behind what may be read again
            chunk = queue.pop(0)
            data[written:written + len(chunk)] = chunk
            written += len(chunk)
    for chunk in queue:
        data[written:written + len(chunk)] = chunk
        written += len(chunk)
    del data[written:]
    del data[:start]
    return data


def unarmor_if_needed(data: bytes, start: int = 0, end: int | None = None, **kw) -> bytes:
    """The OpenPGP data of ``data[start:end]``: binary as is, armored decoded."""
    if is_armored(data, start, end):
        return dearmor(data, start=start, end=end, **kw)[1]
    return data if (start, end) in ((0, None), (0, len(data))) else data[start:end]
