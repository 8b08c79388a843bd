"""Whom a valid signature speaks for: the signer's user IDs against the From address shown.

A signature is ``valid`` for a reader only when the signing key has a valid user
ID for the From address shown (RFC 9788: the protected inner From when there is
one, else the outer From), or when the key is the gateway key of that address's
domain (a member gateway signs the office mail it encrypts). Otherwise it is
``signer-mismatch``. Addresses are compared on the addr-spec, case-insensitively,
never on display names. A user ID counts only when it names exactly one address
and its display name holds no ``@``: ``"ministre@x" <alice@y>`` or ``a@x, b@y``
bind nothing to ``ministre@x``. A protected From that differs from the outer From
is reported too (``from_mismatch``).

A signature by a key not known here may be checked again with a key found later
for the From shown (``reverify``): that key answers only for a signature whose
issuer (key ID, issuer fingerprint) is its primary key or one of its subkeys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from typing import Callable, Iterable

from ..crypto import message as M
from ..crypto.keys import Key

SIGNER_MISMATCH = "signer-mismatch"
_ADDR = r"[^\s<>()\[\]\\,;:@\"]+@[^\s<>()\[\]\\,;:@\"]+"
_BARE = re.compile(_ADDR)
_NAMED = re.compile(rf"[^<>@]*?\s*<({_ADDR})>")
# "Name <addr>", "\"Name\" <addr>" or "addr": the usual From, read without the (slow) header parser
_FROM_FAST = re.compile(rf'\s*(?:(?:"[^"\\<>@]*"|[^<>@,;:"()\\]*?)\s*<({_ADDR})>|({_ADDR}))\s*')
_SAFE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")  # fit for a header value


@dataclass(frozen=True)
class SenderCheck:
    signature: str                     # the status to show: the signature's, or "signer-mismatch"
    shown: str | None                  # the From addr-spec shown, None unless exactly one address
    outer: str | None                  # the outer From addr-spec
    from_mismatch: bool                # a protected From differs from the outer From
    signer_addresses: tuple[str, ...]  # what the signer's user IDs bind


def uid_address(uid: str) -> str | None:
    """The one address a user ID binds (lower case), or None when it is not exactly one."""
    uid = uid.strip()
    if _BARE.fullmatch(uid):
        return uid.lower()
    m = _NAMED.fullmatch(uid)
    return m.group(1).lower() if m else None


def from_address(value: str | None) -> str | None:
    """The addr-spec of a From value holding exactly one mailbox (lower case), else None."""
    if not value:
        return None
    fast = _FROM_FAST.fullmatch(value)
    if fast:
        return (fast.group(1) or fast.group(2)).lower()
    try:
        addrs = policy.default.header_factory("from", str(value)).addresses
    except Exception:  # noqa: BLE001 - an unparseable From binds nothing
        return None
    if len(addrs) != 1 or not addrs[0].username or not addrs[0].domain:
        return None
    return addrs[0].addr_spec.lower()


def gateway_uid_vouches(addresses: Iterable[str]) -> Callable[[str], bool]:
    """For a reader: a key whose user ID is ``gateway@DOMAIN`` speaks for DOMAIN's senders."""
    domains = {a.partition("@")[2] for a in addresses if a.partition("@")[0] == "gateway"}
    return domains.__contains__


def check_sender(status: str, signer_uids: Iterable[str], shown_from: str | None,
                 outer_from: str | None, vouches: Callable[[str], bool] = lambda d: False) -> SenderCheck:
    """Bind a signature status to the From shown; ``vouches(domain)``: the signer is that domain's
    gateway key. Only ``valid`` can become ``signer-mismatch``; other statuses stay as they are."""
    bound = tuple(dict.fromkeys(a for a in map(uid_address, signer_uids) if a))
    shown, outer = from_address(shown_from), from_address(outer_from)
    if status == "valid" and (shown is None or not (
            shown in bound or vouches(shown.rpartition("@")[2]))):
        status = SIGNER_MISMATCH
    mismatch = bool(shown_from) and bool(outer_from) and shown_from != outer_from and shown != outer
    return SenderCheck(status, shown, outer, mismatch, bound)


def header_safe(addresses: Iterable[str]) -> list[str]:
    """The addresses that can go into a header parameter as they are (no spaces, ``;`` or quotes)."""
    return [a for a in addresses if _SAFE.fullmatch(a)]


def issued_by(key: Key, keyid: str, fpr: str | None) -> bool:
    """Is the issuer a signature names (key ID and/or issuer fingerprint) ``key`` or one of its subkeys?
    Every identifier the signature gives must name the same component; naming none matches nothing."""
    if not keyid and not fpr:
        return False
    return any((not fpr or c.fingerprint == fpr.upper()) and (not keyid or c.keyid == keyid.upper())
               for c in (key.status.primary, *key.status.subkeys))


def reverify(data: bytes, sigs: list[bytes], results: Iterable[M.SignatureResult],
             key: Key) -> tuple[M.SignatureResult, ...]:
    """``results`` (one per packet of ``sigs``, in order) with each ``unknown-key`` one checked again
    against ``key`` alone, only where ``key`` issued it; the others are kept as they were."""
    def only(keyid: str, fpr: str | None) -> Key | None:
        return key if issued_by(key, keyid, fpr) else None
    return tuple(M.verify_signatures(data, [raw], only)[0] if r.status == "unknown-key" else r
                 for raw, r in zip(sigs, results))
