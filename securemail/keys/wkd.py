"""Web Key Directory (draft-koch-openpgp-webkey-service): z-base-32 hashes, URLs and the served key.

Pure functions, no network. A WKD answers ``GET /.well-known/openpgpkey/<domain>/hu/<h>``
(the advanced method; ``/.well-known/openpgpkey/hu/<h>`` is the direct method) with
the binary key of the address whose local part hashes to ``h``: z-base-32 of the
SHA-1 of the lower-cased local part. What is served, and what is kept of a key
fetched, is filtered here: the primary key, its direct signatures, only the user
ID of the exact address (with its signatures) and the subkeys with their
bindings, then validated again. A directory speaks for the address asked for,
never for another one (finding 3 of issue 10).
"""

from __future__ import annotations

import hashlib
import re
from email.utils import parseaddr
from urllib.parse import quote

from ..crypto import packets as P
from ..crypto.keys import Key, load_key
from ..errors import KeyRefused, UsageError

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
PREFIX = "/.well-known/openpgpkey"
HASH_RE = re.compile(rf"[{ZBASE32}]{{32}}")
MAX_KEY_BYTES = 1 << 20         # a WKD answer larger than this is refused
SERVED_STATES = ("valid", "revoked")  # revoked keys are served so that revocations reach caches


def zbase32(data: bytes) -> str:
    """z-base-32 (the human-oriented base-32 of the WKD draft), most significant bit first."""
    bits = int.from_bytes(data, "big")
    n = len(data) * 8
    chars = (n + 4) // 5
    bits <<= chars * 5 - n
    return "".join(ZBASE32[(bits >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only, as GnuPG does for the WKD hash."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)


def split_address(address: str) -> tuple[str, str]:
    """(local part, lower-case domain) of an address; UsageError when it is not one."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain or "/" in domain or any(c.isspace() for c in address.strip()):
        raise UsageError(f"not an email address: {address!r}")
    return local, domain.lower().rstrip(".")


def wkd_hash(local: str) -> str:
    """The 32-character hash of a local part: z-base-32(SHA-1(lower-case local part))."""
    return zbase32(hashlib.sha1(ascii_lower(local).encode("utf-8")).digest())


def advanced_path(address: str) -> str:
    """The path (and query) of the advanced method for ``address``."""
    local, domain = split_address(address)
    return f"{PREFIX}/{domain}/hu/{wkd_hash(local)}?l={quote(local, safe='')}"


def direct_path(address: str) -> str:
    local, _ = split_address(address)
    return f"{PREFIX}/hu/{wkd_hash(local)}?l={quote(local, safe='')}"


def advanced_url(hostport: str, address: str) -> str:
    """``https://HOST:PORT/.well-known/openpgpkey/<domain>/hu/<hash>?l=<local>``."""
    return f"https://{hostport}{advanced_path(address)}"


def policy_path(domain: str) -> str:
    return f"{PREFIX}/{domain.lower()}/policy"


def uid_address(uid: bytes) -> str:
    """The lower-case address of a user ID (as KeyStatus.addresses reads it), or '' when it has none."""
    addr = parseaddr(uid.decode("utf-8", "replace"))[1].lower()
    return addr if "@" in addr else ""


def uid_domain(uid: bytes) -> str:
    """The lower-case domain of a user ID's address, or '' when it has none."""
    return uid_address(uid).rpartition("@")[2].rstrip(".")


def filter_key(binary: bytes, domain: str, address: str | None = None) -> bytes:
    """The certificate cut down to the user IDs of ``domain`` (of ``address`` alone when given);
    b"" when none is left.

    Kept: the primary key and its direct signatures, each user ID of ``domain``
    (or ``address``) with its signatures, every subkey with its signatures.
    Dropped: other user IDs, user attributes (photos), trust, marker and unknown
    packets. Secret key material is refused, never served.
    """
    pkts = [p for p in P.read_packets(binary) if p.tag != P.TRUST]
    if pkts[0].tag != P.PUBKEY:
        raise KeyRefused("only a public key can be served")
    out, keep, kept_uid = [pkts[0].raw], True, False
    domain, address = domain.lower(), address.strip().lower() if address else None
    for p in pkts[1:]:
        if p.tag in (P.UID, P.UAT):
            keep = p.tag == P.UID and uid_domain(p.body) == domain and (
                address is None or uid_address(p.body) == address)
            kept_uid |= keep
        elif p.tag == P.PUBSUBKEY:
            keep = True
        elif p.tag in (P.PUBKEY, P.SECKEY, P.SECSUBKEY):
            raise KeyRefused("one public key expected")
        elif p.tag != P.SIG:
            continue
        if keep:
            out.append(p.raw)
    return b"".join(out) if kept_uid else b""


def cut_to(key: Key, address: str) -> Key | None:
    """``key``'s certificate with the user ID of ``address`` alone, validated again; None when
    no valid user ID for the address is left (or what is left is refused)."""
    _, domain = split_address(address)
    try:
        blob = filter_key(key.public().binary(), domain, address)
        cut = load_key(blob) if blob else None
    except KeyRefused:
        return None
    return cut if cut is not None and address.strip().lower() in cut.status.addresses else None


def served_key(key: Key, address: str, now: float) -> Key | None:
    """What the directory may serve for ``address`` from ``key``: cut to the address, validated again.

    None when the key has no valid user ID for the address after filtering, or
    is expired (a revoked key is served: the draft lets a server return revoked
    keys so that those who cached them learn of the revocation).
    """
    cut = cut_to(key, address)
    return cut if cut is not None and cut.state_at(now) in SERVED_STATES else None


def keys_for(data: bytes, address: str) -> tuple[list[Key], list[str]]:
    """The keys in a WKD answer that carry a valid user ID for ``address``, each cut to that user ID
    alone (the directory speaks for nothing else), and why others were dropped."""
    from ..crypto.keys import load_keys
    if len(data) > MAX_KEY_BYTES:
        return [], ["answer too large"]
    keys, dropped = [], []
    try:
        items = load_keys(data)
    except Exception:  # noqa: BLE001 - hostile bytes from the network; PGPy raises many types
        return [], ["unreadable key data"]
    for item in items:
        if isinstance(item, KeyRefused):
            dropped.append(item.message)
        elif address.lower() not in item.status.addresses:
            dropped.append(f"{item.fingerprint} has no valid user ID for {address}")
        elif (cut := cut_to(item, address)) is None:
            dropped.append(f"{item.fingerprint} is not valid once cut to the user ID of {address}")
        else:
            keys.append(cut)
    return keys, dropped
