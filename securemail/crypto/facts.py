"""Neutral facts about a certificate, as openpgp.py reads them: what keys.py judges validity from.

No PGPy here: these are plain values, so the validity rules in keys.py can be
read and tested without knowing PGPy's object model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SigFacts:
    """What one signature says, and whether it verified against its expected issuer."""
    type: int
    created: float
    expires_at: float | None
    key_lifetime: float | None      # key expiration subpacket, seconds after key creation
    key_flags: int | None
    issuer_keyid: str
    hash_name: str
    revocation_code: int | None
    revocation_text: str
    primary_uid: bool
    verified: bool
    backsig_verified: bool = False  # for signing subkeys: the embedded 0x19 verified


@dataclass(frozen=True)
class SubkeyFacts:
    fingerprint: str
    keyid: str
    algorithm: str
    bits: int
    created: float
    sigs: tuple[SigFacts, ...]
    has_secret: bool


@dataclass(frozen=True)
class KeyFacts:
    """A certificate as neutral data, every self-signature already checked."""
    fingerprint: str
    keyid: str
    algorithm: str
    bits: int
    created: float
    direct_sigs: tuple[SigFacts, ...]          # revocations and direct-key signatures
    uids: tuple[tuple[str, tuple[SigFacts, ...]], ...]
    subkeys: tuple[SubkeyFacts, ...]
    is_secret: bool
    is_protected: bool
