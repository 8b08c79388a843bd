"""The copies the bridge makes of one message from a mail client: who gets which, each sealed alike.

One copy goes to the envelope recipients named in To or Cc, encrypted to each of their keys and to
the sender's. Every other envelope recipient is a blind copy (clients put Bcc in the envelope and,
most of them, nowhere else) and gets a copy of their own, encrypted to their key alone: a Bcc key is
in no other copy's packets, and no copy carries a Bcc field, so nobody learns who else had one.

Each copy is sealed as the gateway seals office mail (transform/routes.py): the client's message,
transport fields and Bcc removed, is the inner entity with its headers protected (``hp="cipher"``,
its MIME structure byte for byte), signed and encrypted in one pass (crypto/message.py); the outer
message is compose.pgp_mime's (routing fields only, Subject ``...``). Nothing here writes MIME.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate, getaddresses, make_msgid
from typing import Iterable

from securemail.config import Limits
from securemail.crypto import message as M
from securemail.crypto.keys import Key
from securemail.mail.compose import pgp_mime
from securemail.mail.headers import HeaderBlock, parse_header_block
from securemail.transform.routes import add_headers, protected_inner, top_headers

HIDDEN = ("bcc", "resent-bcc")  # never in any copy, inside or outside the encryption


@dataclass(frozen=True)
class Copy:
    """One copy: its envelope recipients, and the addresses whose keys it is encrypted to."""
    rcpts: tuple[str, ...]
    readers: tuple[str, ...]


def parsed(raw: bytes, limits: Limits, identity: str, now: float) -> tuple[bytes, HeaderBlock]:
    """The message and its one header parse (within ``limits``: HeaderBlockError beyond), with the
    Date and Message-ID a submission service adds when the client gave none (RFC 6409 8.2, 8.3)."""
    block = parse_header_block(raw, max_bytes=limits.header_bytes, max_fields=limits.header_fields)
    missing = []
    if block.first("date") is None:
        missing.append(("Date", formatdate(now, usegmt=True)))
    if block.first("message-id") is None:
        missing.append(("Message-ID", make_msgid(domain=identity.rpartition("@")[2])))
    if not missing:
        return raw, block
    raw = add_headers(raw, missing)
    return raw, parse_header_block(raw, max_bytes=limits.header_bytes + 1024, max_fields=limits.header_fields + 2)


def named(block: HeaderBlock) -> set[str]:
    """The addresses in the To and Cc fields, lower case."""
    values = [*block.texts("to"), *block.texts("cc")]
    return {a.strip().lower() for _, a in getaddresses(values) if a.strip()}


def plan(identity: str, block: HeaderBlock, rcpts: Iterable[str]) -> list[Copy]:
    """The copies for the envelope recipients ``rcpts``: the visible one first (when any recipient
    is named in To or Cc), then one per blind recipient."""
    rcpts = list(dict.fromkeys(r.lower() for r in rcpts))
    visible = named(block)
    shown = tuple(r for r in rcpts if r in visible)
    copies = [Copy(shown, tuple(dict.fromkeys((*shown, identity))))] if shown else []
    return copies + [Copy((r,), (r,)) for r in rcpts if r not in visible]


def inner(raw: bytes, block: HeaderBlock) -> bytes:
    """The inner entity every copy carries: the client's message with its headers protected, less the
    transport fields and Bcc."""
    return protected_inner(raw, block, without=HIDDEN)


def outer_headers(raw: bytes, block: HeaderBlock) -> dict[str, str]:
    """The routing fields the outer message shows (compose.pgp_mime writes Subject ``...``)."""
    return top_headers(raw, fields=[(f.name, f.raw) for f in block.fields])


def sealed(entity: bytes, outer: dict[str, str], readers: list[tuple[Key, str]], signer: Key,
           now: float) -> bytes:
    """One copy: ``entity`` signed by ``signer`` (unlocked) and encrypted to ``readers`` ((key,
    address) pairs), in the PGP/MIME wrapper; KeyUnusable naming the address, nothing produced."""
    return pgp_mime(outer, M.encrypt(entity, readers, signer=signer, now=now))
