"""A compressed packet inflated within a limit: a compression bomb stops at it.

Inflated in 1 MiB steps into one buffer: memory about once the limit, whatever the ratio.
"""

from __future__ import annotations

import bz2
import zlib

from ..errors import LimitExceeded, MalformedMessage
from . import packets as P


def inflate(pkt: P.Packet, limit: int) -> bytes:
    """Inflate in 1 MiB steps into one buffer: a bomb stops at ``limit``, memory ~1x the limit."""
    if not pkt.body:
        raise MalformedMessage("empty compressed packet")
    algo, data = pkt.body[0], pkt.body[1:]
    if algo == 0:
        return data
    if algo in (1, 2):
        d = zlib.decompressobj(-15 if algo == 1 else 15)
        errors: tuple = (zlib.error,)
    elif algo == 3:
        d = bz2.BZ2Decompressor()
        errors = (OSError, ValueError, EOFError)
    else:
        raise MalformedMessage("unknown compression algorithm")
    out = bytearray()
    step = lambda: min(1 << 20, limit + 1 - len(out))  # noqa: E731 - never past limit + 1
    try:
        if algo == 3:
            chunk = d.decompress(data, step())
            while True:
                out += chunk
                if len(out) > limit:
                    break
                if d.eof or (not chunk and d.needs_input):
                    break
                chunk = d.decompress(b"", step())
        else:
            tail = data
            while True:
                chunk = d.decompress(tail, step())
                out += chunk
                tail = d.unconsumed_tail
                if len(out) > limit or not (tail or chunk):
                    break
    except errors:
        raise MalformedMessage("corrupt compressed data") from None
    if len(out) > limit:
        raise LimitExceeded(f"decompressed message exceeds the limit of {limit >> 20} MiB; refused")
    return bytes(out)
