"""Envelope addresses: strict syntax, and which kind of domain a recipient belongs to."""

from __future__ import annotations

import re

OWN, MEMBER, OTHER = "own", "member", "other"

_LOCAL = re.compile(r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*\Z")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")


def split(address: str) -> tuple[str, str] | None:
    """(local, domain lower-cased) for a plain dot-atom address, else None.

    Refused on purpose: quoted local parts, source routes (@a:b@c), '%' hacks
    (u%ext@gw), '!' paths, IP literals, anything with control or 8-bit chars.
    """
    if not address or len(address) > 254 or address.count("@") != 1:
        return None
    local, domain = address.rsplit("@", 1)
    if "%" in local or "!" in local or len(local) > 64 or not _LOCAL.match(local):
        return None
    if not is_domain(domain):
        return None
    return local, domain.lower()


def is_domain(name: str) -> bool:
    """A dotted domain name, the one syntax securemail accepts (addresses, gateway init, the
    manifest): labels of 1 to 63 letters, digits and inner hyphens, a top label of 2 to 63 letters,
    253 characters at most; any case (lower-case it, or require it, where that matters)."""
    return bool(_DOMAIN.match(name))


def domain_of(address: str) -> str | None:
    parts = split(address)
    return parts[1] if parts else None


def classify(domain: str, own: tuple[str, ...] | frozenset[str], members) -> str:
    """OWN (served here), MEMBER (in the federation manifest) or OTHER."""
    d = domain.lower()
    if d in own:
        return OWN
    if d in members:
        return MEMBER
    return OTHER
