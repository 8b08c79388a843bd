"""APPEND: what a mail client stores (a draft, a sent copy) goes upstream encrypted to its owner.

The client's message, whole, is the protected entity (its own headers are the protected ones,
RFC 9788); it is signed and encrypted to the owner's key alone and wrapped in PGP/MIME whose
outer header shows only From, To, Cc, Date, Message-ID and Subject ``...`` (mail/compose.py), as
``securemail send`` writes. Every APPEND is encrypted, whatever it looks like: a message that
claims to be encrypted already may be plaintext in disguise.
"""

from __future__ import annotations

import time
from typing import Callable

from ..crypto import message as M
from ..crypto.keys import Key
from ..mail.compose import pgp_mime
from ..mail.crossing import COPIED
from ..mail.headers import parse_header_block
from .view import crlf


def sealer(owner: Key, address: str, clock: Callable[[], float] = time.time) -> Callable[[bytes], bytes]:
    """``seal(raw) -> bytes``; ``owner``: the owner's key, secret part unlocked."""
    def seal(raw: bytes) -> bytes:
        raw = crlf(raw)
        block = parse_header_block(raw)
        headers = {}
        for name in COPIED:
            found = block.first(name)
            if found is not None:
                headers[name] = found.value.replace(b"\r\n", b"").strip().decode("utf-8", "replace")
        armored = M.encrypt(raw, [(owner, address)], signer=owner, now=clock())
        return pgp_mime(headers, armored)
    return seal
