"""The gateway's own status headers on inbound mail, and nobody else's (RFC 8601 §5).

Every ``Securemail-Status`` and ``Authentication-Results`` that comes with a
message was written by its sender, whatever it claims: the gateway removes them
from the outer headers (transform.inbound, with strip_headers) and from the
header block of a decrypted message (``without_status``) before it adds its own.

``Securemail-Status: encrypted=yes|no; signature=S[; signer=FPR]
[; signer-addresses=A,B][; warning=W,...]``, where S is ``valid``, ``invalid``,
``unknown-key``, ``none`` (decrypted, not signed), ``unchecked`` (not decrypted
here) or ``signer-mismatch`` (a valid signature by a key that does not speak
for the From shown; its addresses follow), and a warning is ``from-mismatch``
(the protected From is not the outer From) or ``sender-status-removed`` (the
decrypted message carried status headers of its own; they were removed, and
with them, in maildir mode, the sender's signature that covered them).
"""

from __future__ import annotations

import re

from ..crypto import message as M
from ..mail import signer as S

STATUS_FIELDS = ("authentication-results", "securemail-status")
FROM_MISMATCH = "from-mismatch"
SENDER_STATUS_REMOVED = "sender-status-removed"
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


def _head(data: bytes) -> tuple[list[list[bytes]], int]:
    """The header fields (lines with their ends) a MIME parser reads at the top of ``data``,
    CRLF or LF, and the offset where they end."""
    fields: list[list[bytes]] = []
    pos, n = 0, len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = data[pos:end]
        if line[:1] in (b" ", b"\t") and fields and line.strip():
            fields[-1].append(line)
        elif _FIELD.match(line):
            fields.append([line])
        else:
            break
        pos = end
    return fields, pos


def _name(field: list[bytes]) -> str:
    return field[0].split(b":", 1)[0].strip().lower().decode("latin-1")


def without_status(data: bytes) -> bytes | None:
    """``data`` without the status fields of its header block; None when it has none (no copy)."""
    fields, end = _head(data)
    kept = [f for f in fields if _name(f) not in STATUS_FIELDS]
    if len(kept) == len(fields):
        return None
    return b"".join(line for f in kept for line in f) + data[end:]


def inner_from(data: bytes) -> str | None:
    """The protected From of a decrypted message (RFC 9788), unfolded; None without one."""
    for f in _head(data)[0]:
        if _name(f) == "from":
            return " ".join(b"".join(f).split(b":", 1)[1].decode("utf-8", "replace").split())
    return None


def auth_results(hostname: str, dkim_status: str, from_domain: str | None) -> tuple[str, str]:
    return ("Authentication-Results",
            f"{hostname}; dkim={dkim_status}" + (f" header.d={from_domain}" if from_domain else ""))


def securemail_status(encrypted: bool, check: S.SenderCheck | None, sig: M.SignatureResult | None,
                      *, decrypted: bool, removed: bool = False) -> tuple[str, str]:
    """The gateway's Securemail-Status; ``check``: the signature bound to the From shown."""
    status = check.signature if check else (sig.status if sig else ("none" if decrypted else "unchecked"))
    parts = [f"encrypted={'yes' if encrypted else 'no'}", f"signature={status}"]
    if sig and sig.signer:
        parts.append(f"signer={sig.signer}")
    if check and status == S.SIGNER_MISMATCH:
        parts.append(f"signer-addresses={','.join(S.header_safe(check.signer_addresses)) or 'none'}")
    warnings = [w for w, on in ((FROM_MISMATCH, check is not None and check.from_mismatch),
                                (SENDER_STATUS_REMOVED, removed)) if on]
    if warnings:
        parts.append(f"warning={','.join(warnings)}")
    return ("Securemail-Status", "; ".join(parts))
