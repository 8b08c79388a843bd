"""Key validity decided by us, not PGPy: self-signatures, expiry, revocation, weak algorithms.

``Key`` is what the rest of securemail handles. Its ``status(now)`` is a pure
function of the neutral facts from openpgp.py: which user IDs are bound, which
subkeys may encrypt or sign, whether the key is expired, revoked or refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parseaddr

from ..errors import KeyRefused, KeyUnusable
from . import openpgp
from .facts import KeyFacts, SigFacts

CERT_TYPES = {0x10, 0x11, 0x12, 0x13}
SUBKEY_BINDING, KEY_REVOCATION, SUBKEY_REVOCATION, UID_REVOCATION, DIRECT = 0x18, 0x20, 0x28, 0x30, 0x1F
WEAK_HASHES = {"MD5", "SHA1", "RIPEMD160"}
# Revocation reasons after which earlier signatures stay valid (RFC 9580 §5.2.3.31).
SOFT_REASONS = {1, 3, 32}
FLAG_CERTIFY, FLAG_SIGN, FLAG_ENC_COMMS, FLAG_ENC_STORAGE = 0x01, 0x02, 0x04, 0x08
# Elliptic curves accepted, as openpgp.py names them ("ecdsa-<curve>", "ecdh-<curve>", or
# "ed25519"/"cv25519"); a key on any other curve is refused at import, naming the curve.
EC_CURVES = ("nistp256", "nistp384", "nistp521", "brainpoolP256r1", "brainpoolP384r1",
             "brainpoolP512r1")
ENC_ALGOS = {"rsa", "cv25519", *(f"ecdh-{c}" for c in EC_CURVES)}


@dataclass(frozen=True)
class Revocation:
    at: float
    code: int | None
    text: str

    @property
    def hard(self) -> bool:
        return self.code not in SOFT_REASONS


@dataclass(frozen=True)
class Component:
    """The primary key or a subkey, with what its latest valid binding says."""
    keyid: str
    fingerprint: str
    algorithm: str
    created: float
    flags: int
    expires: float | None
    revocation: Revocation | None
    backsig: bool = True

    def usable_at(self, t: float) -> str | None:
        """None when usable at time t, else the reason."""
        if self.revocation and (self.revocation.hard or self.revocation.at <= t):
            return "revoked"
        if self.created > t + 60:
            return "not yet valid"
        if self.expires is not None and self.expires <= t:
            return "expired"
        return None


@dataclass(frozen=True)
class KeyStatus:
    fingerprint: str
    algorithm: str
    bits: int
    created: float
    uids: tuple[str, ...]
    primary: Component
    subkeys: tuple[Component, ...]
    state: str  # "valid" | "expired" | "revoked"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for a in (parseaddr(u)[1].lower() for u in self.uids) if "@" in a))

    @property
    def expires(self) -> float | None:
        return self.primary.expires

    @property
    def revocation(self) -> Revocation | None:
        return self.primary.revocation

    def encryption_keys(self, now: float) -> list[Component]:
        if self.primary.usable_at(now):
            return []
        return [c for c in (self.primary, *self.subkeys)
                if c.flags & (FLAG_ENC_COMMS | FLAG_ENC_STORAGE) and c.algorithm in ENC_ALGOS
                and c.usable_at(now) is None]

    def signing_keys(self, now: float) -> list[Component]:
        if self.primary.usable_at(now):
            return []
        return [c for c in (self.primary, *self.subkeys)
                if c.flags & FLAG_SIGN and c.backsig and c.usable_at(now) is None]

    def signature_problem(self, keyid: str, t: float) -> str | None:
        """Why a data signature made at ``t`` by ``keyid`` is not valid; None if it is."""
        comp = next((c for c in (self.primary, *self.subkeys) if c.keyid == keyid.upper()), None)
        if comp is None:
            return "signing key not part of this certificate"
        why = self.primary.usable_at(t)
        if why:
            return f"signer key {why}"
        if not comp.flags & FLAG_SIGN or not comp.backsig:
            return "key is not a signing key"
        why = comp.usable_at(t)
        return f"signing subkey {why}" if why else None


def _latest(sigs, types) -> SigFacts | None:
    good = [s for s in sigs if s.type in types and s.verified and s.hash_name not in WEAK_HASHES]
    return max(good, key=lambda s: s.created, default=None)


def _revocation(sigs, rtype) -> Revocation | None:
    revs = [s for s in sigs if s.type == rtype and s.verified]
    if not revs:
        return None
    r = min(revs, key=lambda s: s.created)
    return Revocation(r.created, r.revocation_code, r.revocation_text)


def _weak_primary(algorithm: str, bits: int) -> str | None:
    if algorithm in ("dsa", "elgamal"):
        return f"weak algorithm {algorithm.upper()}"
    if algorithm == "rsa" and bits < 2048:
        return f"weak algorithm RSA-{bits}"
    return _unsupported_curve(algorithm)


def _unsupported_curve(algorithm: str) -> str | None:
    """'secp256k1 keys are not supported' for an EC key on a curve outside EC_CURVES."""
    kind, _, curve = algorithm.partition("-")
    if kind in ("ecdsa", "ecdh", "eddsa") and curve not in EC_CURVES:
        return f"{curve} keys are not supported"
    return None


def evaluate(f: KeyFacts) -> KeyStatus:
    """Validate a certificate; raise KeyRefused with a one-line reason when it must be refused."""
    weak = _weak_primary(f.algorithm, f.bits)
    if weak:
        raise KeyRefused(weak)
    selfsigs = [s for _, sigs in f.uids for s in sigs] + [s for s in f.direct_sigs]
    uids, bindings = [], []
    for uid, sigs in f.uids:
        best = _latest(sigs, CERT_TYPES)
        if best is None and any(not s.verified for s in sigs if s.type in CERT_TYPES):
            # A user ID whose only binding does not verify: tampered, refuse the whole key.
            # (A bad extra signature next to a good one is ignored, as gpg does.)
            raise KeyRefused("broken self-signature")
        if best is None or _revocation(sigs, UID_REVOCATION):
            continue
        uids.append(uid)
        bindings.append(best)
    if not bindings:
        if any(s.hash_name in WEAK_HASHES for s in selfsigs):
            raise KeyRefused("self-signature uses a weak hash (MD5/SHA-1)")
        raise KeyRefused("no user ID with a valid self-signature")
    main = max(bindings, key=lambda s: (s.primary_uid, s.created))
    direct = _latest(f.direct_sigs, {DIRECT})
    lifetime = main.key_lifetime if main.key_lifetime is not None else (direct.key_lifetime if direct else None)
    flags = main.key_flags if main.key_flags is not None else (FLAG_CERTIFY | FLAG_SIGN)
    primary = Component(f.keyid, f.fingerprint, f.algorithm, f.created, flags,
                        f.created + lifetime if lifetime else None,
                        _revocation(f.direct_sigs, KEY_REVOCATION))
    subs = []
    for sk in f.subkeys:
        bind = _latest(sk.sigs, {SUBKEY_BINDING})
        if bind is None or _weak_primary(sk.algorithm, sk.bits):
            continue
        sflags = bind.key_flags or 0
        subs.append(Component(sk.keyid, sk.fingerprint, sk.algorithm, sk.created, sflags,
                              sk.created + bind.key_lifetime if bind.key_lifetime else None,
                              _revocation(sk.sigs, SUBKEY_REVOCATION),
                              backsig=not (sflags & FLAG_SIGN) or bind.backsig_verified))
    now = time.time()
    state = "revoked" if primary.revocation else (
        "expired" if primary.expires is not None and primary.expires <= now else "valid")
    return KeyStatus(f.fingerprint, f.algorithm, f.bits, f.created, tuple(uids), primary,
                     tuple(subs), state)


class Key:
    """A validated OpenPGP key (certificate, possibly with its secret)."""

    def __init__(self, pgp: openpgp.PgpKey) -> None:
        self.pgp = pgp
        self.fingerprint = pgp.fingerprint
        self.status = evaluate(pgp.facts())

    @property
    def is_secret(self) -> bool:
        return self.pgp.is_secret

    @property
    def keyids(self) -> set[str]:
        return {c.keyid for c in (self.status.primary, *self.status.subkeys)}

    def state_at(self, now: float) -> str:
        st = self.status
        if st.revocation:
            return "revoked"
        if st.expires is not None and st.expires <= now:
            return "expired"
        return "valid"

    def require_encryption_keys(self, now: float, who: str = "") -> list[Component]:
        who = who or self.fingerprint
        state = self.state_at(now)
        if state != "valid":
            raise KeyUnusable(f"key for {who} is {state}; nothing is encrypted to it")
        comps = self.status.encryption_keys(now)
        if not comps:
            raise KeyUnusable(f"key for {who} has no valid encryption subkey")
        return comps

    def require_signing_key(self, now: float) -> Component:
        if self.state_at(now) != "valid":
            raise KeyUnusable(f"own key {self.fingerprint} is {self.state_at(now)}; cannot sign")
        comps = self.status.signing_keys(now)
        if not comps:
            raise KeyUnusable(f"own key {self.fingerprint} has no valid signing key")
        return max(comps, key=lambda c: c.created)

    def public(self) -> "Key":
        """The certificate alone (cached: evaluating a key is not free)."""
        if not self.is_secret:
            return self
        if getattr(self, "_public", None) is None:
            self._public = Key(self.pgp.public())
        return self._public

    def armored(self) -> bytes:
        return self.pgp.armored()

    def binary(self) -> bytes:
        return self.pgp.binary()


def load_keys(data: bytes) -> list[Key | KeyRefused]:
    """Parse and validate every key in ``data``; refused keys come back as KeyRefused."""
    out: list[Key | KeyRefused] = []
    for item in openpgp.parse_keys(data):
        if isinstance(item, KeyRefused):
            out.append(item)
            continue
        try:
            out.append(Key(item))
        except KeyRefused as e:
            e.detail = item.fingerprint
            out.append(e)
        except Exception:  # noqa: BLE001 - hostile packets PGPy chokes on
            out.append(KeyRefused("key cannot be parsed", detail=item.fingerprint))
    return out


def load_key(data: bytes) -> Key:
    """Exactly one valid key, else KeyRefused."""
    items = load_keys(data)
    if len(items) != 1:
        raise KeyRefused(f"expected one key, found {len(items)}")
    if isinstance(items[0], KeyRefused):
        raise items[0]
    return items[0]
