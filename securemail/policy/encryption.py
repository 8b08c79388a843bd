"""Is this message really OpenPGP encrypted? Decided by MIME structure and packet sequence, no keys.

Like chatmail's filtermail: multipart/encrypted with an application/pgp-encrypted
first part and one OpenPGP message whose packets are ESKs then exactly one SEIPD;
or a text/plain inline PGP message passing the same packet check. A literal
packet in disguise, SED without MDC, a signed-only message or plaintext are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy as _policy
from email.parser import BytesParser

from ..crypto.message import check_encrypted
from ..errors import SecureMailError

_BLOCK = re.compile(rb"\A\s*-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\s*\Z", re.S)


@dataclass(frozen=True)
class EncryptionCheck:
    encrypted: bool
    format: str               # "pgp/mime" | "inline" | "none"
    reason: str               # why not, when not
    recipient_keyids: tuple[str, ...] = ()
    payload: bytes = field(default=b"", repr=False)   # the OpenPGP message, transfer-decoded


def check(raw: bytes) -> EncryptionCheck:
    try:
        msg = BytesParser(policy=_policy.compat32).parsebytes(raw)
        ctype = msg.get_content_type()
        if ctype == "multipart/encrypted":
            parts = msg.get_payload()
            if (not isinstance(parts, list) or len(parts) != 2
                    or parts[0].get_content_type() != "application/pgp-encrypted"
                    or msg.get_param("protocol") != "application/pgp-encrypted"):
                return EncryptionCheck(False, "none", "multipart/encrypted is not PGP/MIME")
            payload = parts[1].get_payload(decode=True) or b""
            shape = check_encrypted(payload)
            return EncryptionCheck(True, "pgp/mime", "", shape.recipient_keyids, payload)
        if ctype == "text/plain" and not msg.is_multipart():
            body = msg.get_payload(decode=True) or b""
            if _BLOCK.match(body):
                shape = check_encrypted(body)
                return EncryptionCheck(True, "inline", "", shape.recipient_keyids, body)
        return EncryptionCheck(False, "none", "message is not OpenPGP encrypted")
    except SecureMailError as e:
        return EncryptionCheck(False, "none", e.message)
    except Exception:  # noqa: BLE001 - unparseable is simply not encrypted
        return EncryptionCheck(False, "none", "message cannot be parsed")
