"""Signatures without encryption: one-pass-signed (inline) messages and detached signatures.

Writing: ``inline_sign`` emits OPS..., one binary literal data packet, SIG...
(the signatures in reverse order of their one-pass packets, RFC 9580 §5.4).
Reading: ``inline_verify`` accepts OPS* SIG* LIT SIG* (the trailing signatures
matching the one-pass packets), optionally inside one compressed data packet;
``verify_detached`` accepts one or more signature packets and nothing else.
Signatures are judged by message.verify_signatures (keys.KeyStatus decides
validity), and every result says whether it was a binary or a text signature.
No PGPy here: packets are framed by packets.py, signed by openpgp.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import LimitExceeded, MalformedMessage
from . import armor as A
from . import docsig
from . import message as M
from . import packets as P
from .inflate import inflate
from .keys import Key

SIG_BINARY, SIG_TEXT = 0x00, 0x01
MODES = {SIG_BINARY: "binary", SIG_TEXT: "text"}


@dataclass(frozen=True)
class Verification:
    """One signature's result, its mode ("binary" or "text") and the (sub)key that made it."""
    result: M.SignatureResult
    mode: str
    signing_fpr: str | None = None  # None when the signer's certificate is not known

    @property
    def valid(self) -> bool:
        return self.result.status == "valid"


def cert_lookup(certs: Iterable[Key]) -> M.CertLookup:
    """A lookup over a fixed set of certificates: by any component's key ID or fingerprint."""
    certs = list(certs)

    def lookup(keyid: str, fpr: str | None) -> Key | None:
        for key in certs:
            comps = (key.status.primary, *key.status.subkeys)
            if any(c.keyid == keyid or (fpr and c.fingerprint == fpr) for c in comps):
                return key
        return None
    return lookup


def explain(result: M.SignatureResult, mode: str, lookup: M.CertLookup) -> Verification:
    """Wrap a message.SignatureResult, naming the signing (sub)key's fingerprint."""
    key = lookup(result.keyid, result.signer) if result.signer else None
    if key is None or key.fingerprint != result.signer:
        return Verification(result, mode)
    fpr = next((c.fingerprint for c in (key.status.primary, *key.status.subkeys)
                if c.keyid == result.keyid), None)
    return Verification(result, mode, fpr)


def _one_pass(sig_raw: bytes, last: bool) -> bytes:
    """The one-pass signature packet announcing ``sig_raw`` (RFC 9580 §5.4, version 3).

    Field order: version, signature type, hash algorithm, public-key algorithm,
    issuer key ID, 'last' flag (0 when another one-pass packet follows).
    """
    body = P.read_packet(sig_raw, 0)[0].body
    if len(body) < 4 or body[0] != 4:
        raise MalformedMessage("only version 4 signatures can be announced")
    sigtype, pk_algo, hash_algo = body[1], body[2], body[3]
    keyid = bytes.fromhex(docsig.parse(sig_raw).issuer_keyid)
    if len(keyid) != 8:
        raise MalformedMessage("signature names no issuer key ID")
    return P.write_packet(P.OPS, bytes([3, sigtype, hash_algo, pk_algo]) + keyid
                          + bytes([1 if last else 0]))


def _literal(data: bytes) -> bytes:
    """Binary literal data: format 'b', no file name, date 0."""
    return P.write_packet(P.LITERAL, b"b\x00\x00\x00\x00\x00" + data)


def inline_sign(data: bytes, signers: Sequence[Key], armor: bool = True, *,
                now: float | None = None) -> bytes:
    """A one-pass-signed message over binary ``data`` by every signer (already unlocked).

    Raises KeyUnusable when a signer has no valid signing key now.
    """
    if not signers:
        raise ValueError("inline_sign needs at least one signer")
    now = time.time() if now is None else now
    # Our own one-pass packets: message.sign_packets swaps the hash and public-key fields.
    sigs = [M.sign_packets(data, key, now)[1] for key in signers]
    ops = [_one_pass(sig, i == len(sigs) - 1) for i, sig in enumerate(sigs)]
    sigs.reverse()
    out = b"".join(ops) + _literal(data) + b"".join(sigs)
    return A.armor(out, "PGP MESSAGE") if armor else out


def _unarmor(data: bytes, label: str) -> bytes:
    if data.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        raise MalformedMessage("cleartext-signed (CSF) messages are not supported")
    if not A.is_armored(data):
        return data
    found, binary = A.dearmor(data)
    if found != label:
        raise MalformedMessage(f"expected {label}, found {found}")
    return binary


def _signed_packets(binary: bytes, limits: M.Limits) -> list[P.Packet]:
    pkts = [p for p in P.read_packets(binary, max_packets=limits.max_packets)
            if p.tag not in (P.MARKER, P.PADDING)]
    if len(pkts) == 1 and pkts[0].tag == P.COMPRESSED:
        inner = inflate(pkts[0], limits.max_plaintext)
        pkts = [p for p in P.read_packets(inner, max_packets=limits.max_packets)
                if p.tag not in (P.MARKER, P.PADDING)]
    return pkts


def _check_shape(pkts: list[P.Packet]) -> None:
    """OPS* SIG* LIT SIG*, with one trailing signature for each one-pass packet."""
    tags = [p.tag for p in pkts]
    n_ops = 0
    while n_ops < len(tags) and tags[n_ops] == P.OPS:
        n_ops += 1
    i = n_ops
    while i < len(tags) and tags[i] == P.SIG:
        i += 1
    if i >= len(tags) or tags[i] != P.LITERAL:
        what = P.describe(pkts)
        raise MalformedMessage(f"not an inline-signed OpenPGP message ({what})")
    trailing = tags[i + 1:]
    if any(t != P.SIG for t in trailing) or len(trailing) != n_ops:
        raise MalformedMessage("one-pass signature packets do not match the signatures")


def _judge(data: bytes, sigs: list[bytes], lookup: M.CertLookup) -> tuple[Verification, ...]:
    out = []
    for raw, res in zip(sigs, M.verify_signatures(data, sigs, lookup)):
        try:
            mode = MODES.get(docsig.parse(raw).type, "unknown")
        except MalformedMessage:
            mode = "unknown"
        out.append(explain(res, mode, lookup))
    return tuple(out)


def inline_verify(data: bytes, lookup: M.CertLookup, limits: M.Limits = M.Limits()
                  ) -> tuple[bytes, tuple[Verification, ...]]:
    """(literal data, one Verification per signature) of an inline-signed message.

    The caller decides what to do with the data when nothing is valid.
    Raises MalformedMessage for anything that is not an inline-signed message
    (encrypted data, a bare signature, a key, garbage) and LimitExceeded.
    """
    if len(data) > limits.max_message:
        raise LimitExceeded("message exceeds the size limit")
    pkts = _signed_packets(_unarmor(data, "PGP MESSAGE"), limits)
    _check_shape(pkts)
    content, _name, _mode, sigs = M.parse_inner(b"".join(p.raw for p in pkts), limits)
    return content, _judge(content, sigs, lookup)


def verify_detached(data: bytes, signature: bytes, lookup: M.CertLookup
                    ) -> tuple[Verification, ...]:
    """One Verification per signature packet in ``signature`` (armored or binary)."""
    pkts = P.read_packets(_unarmor(signature, "PGP SIGNATURE"))
    if any(p.tag != P.SIG for p in pkts):
        raise MalformedMessage(f"not a detached signature ({P.describe(pkts)})")
    return _judge(data, [p.raw for p in pkts], lookup)
