"""What a mail client sees of an upstream message: the MIME message it carries, or a notice.

``Viewer.show(raw)`` reads ``raw`` (the message as stored upstream) with the one read path
(mail/read.py: packet checks, decryption, MDC, limits, signatures bound to the From shown)
and returns the message to show, CRLF:

- encrypted (PGP/MIME): the decrypted entity, whose protected headers (RFC 9788: the real
  Subject, From, To...) replace the outer ones; the outer transport fields (Received,
  Return-Path, Delivered-To...) are kept above it; attachments as the sender wrote them;
- inline PGP, or a literal packet posing as encrypted: one text/plain part with the text;
- signed-only and plain mail: as it came;
- refused (no MDC, tampered, a compression bomb, not encrypted to us, unknown format...): a
  short notice with the reason and no byte of the message's plaintext.

Each gets one ``Securemail-Status`` (transform/status.py: ``encrypted=yes|no;
signature=S[; signer=FPR]...``, S as ``read --json`` says it); every ``Securemail-Status`` and
``Authentication-Results`` that came with the message, outside or inside the encryption, is
removed first: the sender wrote those.
"""

from __future__ import annotations

from email.utils import formatdate

from ..crypto.keys import Key
from ..errors import SecureMailError
from ..mail.headers import HEADER_BYTES, parse_header_block
from ..mail.read import Given, ReadResult, read_message
from ..transform.status import STATUS_FIELDS, securemail_status, without_status

NOTICE_FIELDS = ("from", "to", "cc", "date", "message-id")   # an outer field a notice keeps
CONTENT_FIELDS = ("mime-version", "content-type", "content-transfer-encoding", "content-disposition",
                  "content-description", "content-id", "content-language", "content-location")


class Viewer:
    """Reads with the owner's unlocked secret keys; ``lookup``: the key store's (keyid, fpr) -> Key;
    ``signer_key``: read.py's SignerKey (None: the home's keys only)."""

    def __init__(self, secret_keys: list[Key], lookup, signer_key=None) -> None:
        self.secret_keys, self.lookup, self.signer_key = secret_keys, lookup, signer_key

    def read(self, raw: bytes | Given) -> ReadResult:
        return read_message(raw, self.secret_keys, self.lookup, signer_key=self.signer_key, content=False)

    def show(self, raw: bytes | Given) -> bytes:
        """The message to show; given as ``Given`` (the caller holding no other reference), an
        encrypted message's bytes go once its payload is dearmored: only its header block is
        kept, converted, for the message shown."""
        given = raw if isinstance(raw, Given) else Given(raw)
        del raw
        head = crlf_head(given.data)
        res = self.read(given)
        return render(given.data, res, head)


def status_field(res: ReadResult) -> bytes:
    name, value = securemail_status(res.encrypted, res._check, res._sig, decrypted=res.decrypted)
    if res.error:
        value += "; refused=yes"
    return f"{name}: {value}\r\n".encode("ascii", "replace")


def render(raw: bytes | None, res: ReadResult, head: bytes) -> bytes:
    """The message to show for ``raw`` read as ``res`` (see the module docstring); ``head``: its
    ``crlf_head``, taken before the read. ``raw`` is None when the read let it go (an encrypted
    message, read_message's ``Given``): its header block ``head`` is all that is shown of it."""
    if res.error:
        return notice(head, res)
    try:
        block = parse_header_block(head)
    except SecureMailError as e:
        res.error = f"the message's header block cannot be read ({e.message})"
        return notice(head, res)
    if res.format in ("plain", "signed"):
        return block.head(STATUS_FIELDS) + status_field(res) + b"\r\n" + block.body(crlf(raw))
    if res.format == "pgp/mime" and res.decrypted and res._content is not None:
        entity = crlf(res._content)
        entity = without_status(entity) or entity
        inner = parse_header_block(entity).fields if entity[:2] != b"\r\n" else ()
        drop = {*STATUS_FIELDS, *CONTENT_FIELDS, *(f.name for f in inner)}
        if isinstance(entity, bytearray):   # decrypted over the message's memory: shown from there
            res._content = None
            entity[0:0] = block.head(drop) + status_field(res)
            return entity
        return block.head(drop) + status_field(res) + entity
    text = res._content if res._content is not None else res.body.encode("utf-8")
    return (block.head({*STATUS_FIELDS, *CONTENT_FIELDS}) + status_field(res)
            + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
            + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + crlf(text))


def notice(head: bytes, res: ReadResult) -> bytes:
    """A short text message in place of one that cannot be shown: the reason, no plaintext.
    ``head``: the message's header block (``crlf_head``)."""
    reason = " ".join(str(res.error).split()).encode("ascii", "replace").decode()
    try:
        kept = b"".join(f.raw + b"\r\n" for f in parse_header_block(head).fields if f.name in NOTICE_FIELDS)
    except SecureMailError:
        kept = f"Date: {formatdate(usegmt=True)}\r\n".encode()
    body = (f"securemail could not show this message safely, so it shows none of it.\r\n\r\n"
            f"Reason: {reason}\r\n\r\n"
            "The message stays on the server as it came, encrypted; nothing of its content was "
            "shown or stored here.\r\n")
    return (kept + f"Subject: [securemail] message not shown: {reason[:120]}\r\n".encode()
            + status_field(res) + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n"
            + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + body.encode())


def crlf_head(raw: bytes) -> bytes:
    """``crlf(raw)`` up to the end of its first empty line: all that ``parse_header_block`` reads of
    it (the same block, the same body start), without converting a big message's body. When no
    empty line is in the first HEADER_BYTES, all of it, as before (the block is refused or is
    the whole message)."""
    if raw[:1] == b"\n" or raw[:2] == b"\r\n":   # an empty first line: no header field at all
        return b"\r\n"
    look = HEADER_BYTES + 4
    ends = [at for at in (raw.find(b"\n\n", 0, look), raw.find(b"\n\r\n", 0, look)) if at >= 0]
    if not ends:
        return crlf(raw)
    at = min(ends)
    return crlf(raw[:at + (2 if raw[at + 1] == 10 else 3)])


def crlf(data: bytes) -> bytes:
    """``data`` with CRLF line ends (a bare LF becomes CRLF); as it is when it has no bare LF."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
