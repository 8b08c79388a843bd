"""OpenPGP messages: sign+encrypt in one pass, and check-then-decrypt with bounded work.

Writing: one-pass signature, binary literal data, signature, inside one SEIPD
(v1, MDC) packet, AES-256, a PKESK per recipient subkey; no compression.
Reading: the packet shape is checked before any decryption (packets.check_encrypted);
the session key comes from a PKESK; the SEIPD is decrypted here and its MDC
checked before a single byte of plaintext is parsed; decompression stops at a
limit; signatures are judged by keys.KeyStatus, not by PGPy.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # OpenPGP's CFB lives in "decrepit" since cryptography 47
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from ..errors import DecryptionFailed, IntegrityError, LimitExceeded, MalformedMessage
from . import armor as A
from . import docsig
from . import openpgp
from . import packets as P
from .inflate import inflate
from .keys import WEAK_HASHES, Key

AES256 = 9
_PIECE = 1 << 20   # bytes decrypted, or moved, at a time where a message is read over its own buffer
_KEYLEN = {7: 16, 8: 24, 9: 32}


@dataclass(frozen=True)
class Limits:
    max_message: int = 64 << 20        # encrypted input
    max_plaintext: int = 64 << 20      # after decompression
    max_packets: int = 10_000


@dataclass(frozen=True)
class SignatureResult:
    status: str                 # "valid" | "invalid" | "unknown-key"
    signer: str | None          # primary key fingerprint, when known
    keyid: str
    created: float
    reason: str = ""
    uids: tuple[str, ...] = ()  # the signer key's valid user IDs (who it may speak for)


@dataclass(frozen=True)
class Decrypted:
    data: bytes
    filename: str
    mode: str                   # literal data format: "b", "t", "u"
    signatures: tuple[SignatureResult, ...]
    recipients: tuple[str, ...]  # key IDs the message was encrypted to
    packets: bytes | memoryview = b""   # the decrypted packet stream, for re-encryption as is
    sig_packets: tuple[bytes, ...] = ()   # the signature packets found inside

    @property
    def signature(self) -> SignatureResult | None:
        """The one to report: a valid one if any, else the first."""
        return next((s for s in self.signatures if s.status == "valid"), next(iter(self.signatures), None))


class Handed:
    """A binary OpenPGP message whose packet shape the caller checked (``check_encrypted``),
    handed to ``decrypt`` with no other reference to it kept: decrypt takes both, does not read
    the packets a second time, and lets the bytes (a 36 MB binary for a 25 MiB attachment) go
    once they are decrypted, before the plaintext is read, instead of living on in the caller's
    frames."""
    __slots__ = ("data", "shape", "over")

    def __init__(self, data: bytes, shape: P.EncryptedShape, *, over: bool = False) -> None:
        self.data: bytes | None = data
        self.shape: P.EncryptedShape | None = shape
        self.over = over and isinstance(data, bytearray)   # decrypted where it lies (see decrypt)

    def take(self) -> tuple[bytes, P.EncryptedShape]:
        data, shape, self.data, self.shape = self.data, self.shape, None, None
        if data is None or shape is None:
            raise ValueError("already taken")
        return data, shape


CertLookup = Callable[[str, str | None], Key | None]  # (keyid, fingerprint or None) -> Key


def _cfb(key: bytes, encrypt: bool):
    c = Cipher(algorithms.AES(key), CFB(b"\x00" * 16))
    return c.encryptor() if encrypt else c.decryptor()


# --- writing -----------------------------------------------------------------
def _literal(data: bytes, filename: str = "") -> list[bytes]:
    """A binary literal data packet as [header, data] (the data is not copied)."""
    name = filename.encode()[:255]
    head = b"b" + bytes([len(name)]) + name + b"\x00\x00\x00\x00"
    return [P.packet_header(P.LITERAL, len(head) + len(data)) + head, data]


def _one_pass(sig_raw: bytes, last: bool) -> bytes:
    """The one-pass signature packet announcing ``sig_raw`` (a v4 signature we just made)."""
    pkt, _ = P.read_packet(sig_raw, 0)
    body = pkt.body
    if body[0] != 4:
        raise MalformedMessage("only v4 signatures can be announced")
    sig_type, pk_algo, hash_algo = body[1], body[2], body[3]
    hashed_len = int.from_bytes(body[4:6], "big")
    unhashed = body[6 + hashed_len:]
    keyid = P.issuer_keyid(body[6:6 + hashed_len]) or P.issuer_keyid(unhashed[2:])
    if keyid is None:
        raise MalformedMessage("signature names no issuer")
    return P.write_packet(P.OPS, bytes([3, sig_type, hash_algo, pk_algo]) + keyid
                          + bytes([1 if last else 0]))


def sign_packets(data: bytes, signer: Key, now: float) -> tuple[bytes, bytes]:
    """(one-pass signature packet, signature packet) over binary ``data``; key must be unlocked."""
    comp = signer.require_signing_key(now)
    sig = signer.pgp.sign_data(comp.keyid, data)
    return _one_pass(sig, True), sig


def encrypt(data: bytes, recipients: Iterable[tuple[Key, str]], signer: Key | None = None, *,
            now: float | None = None, armor: bool = True, filename: str = "") -> bytes:
    """Sign (if ``signer``, already unlocked) then encrypt ``data`` to every recipient.

    ``recipients`` pairs a key with the address it stands for (for error messages).
    Only valid, unexpired, unrevoked encryption subkeys are used; anything else
    raises KeyUnusable naming the address, and nothing is produced.
    """
    now = time.time() if now is None else now
    targets = _targets(recipients, now)
    inner = _literal(data, filename)
    if signer is not None:
        ops, sig = sign_packets(data, signer, now)
        inner = [ops, *inner, sig]
    return _seal(inner, targets, armor)


def encrypt_packets(stream: bytes, recipients: Iterable[tuple[Key, str]], *,
                    now: float | None = None, armor: bool = True) -> bytes:
    """Encrypt an already-built packet stream (e.g. Decrypted.packets, signatures kept)."""
    return _seal([stream], _targets(recipients, time.time() if now is None else now), armor)


def _targets(recipients, now):
    targets = [(k, c) for k, who in recipients for c in k.require_encryption_keys(now, who)]
    if not targets:
        raise DecryptionFailed("no recipients to encrypt to")
    return targets


def _seal(inner: list[bytes], targets, armor: bool) -> bytes:
    """SEIPD v1 over the packets in ``inner``, hashed and encrypted part by part (no joined copy)."""
    session = openpgp.random_bytes(32)
    prefix = openpgp.random_bytes(16)
    prefix += prefix[-2:]
    sha, enc = hashlib.sha1(), _cfb(session, True)
    chunks = [b"\x01"]
    for part in (prefix, *inner, b"\xd3\x14"):
        sha.update(part)
        chunks.append(enc.update(part))
    chunks += [enc.update(sha.digest()), enc.finalize()]
    body_len = sum(len(c) for c in chunks)
    seen = set()
    esks = []
    for key, comp in targets:
        if comp.keyid in seen:
            continue
        seen.add(comp.keyid)
        # PGPy cannot encrypt to the Cv25519 subkey of a *secret* key object: use the certificate.
        esks.append(key.public().pgp.encrypt_session_key(comp.keyid, AES256, session))
    parts = [*esks, P.packet_header(P.SEIPD, body_len), *chunks]
    del chunks
    return A.armor_parts(parts) if armor else b"".join(parts)  # armored: no joined binary copy


def sign_detached(data: bytes, signer: Key, *, now: float | None = None, armor: bool = True) -> bytes:
    now = time.time() if now is None else now
    _, sig = sign_packets(data, signer, now)
    return A.armor(sig, "PGP SIGNATURE") if armor else sig


# --- reading -------------------------------------------------------------------
def _decrypt_seipd(seipd: P.Packet, sym: int, key: bytes, over: bool = False) -> memoryview:
    """The decrypted packet stream of a SEIPD v1, its MDC checked: a read-only view of the one
    buffer it was decrypted into (a big message's plaintext is not copied to cut the prefix and
    the MDC off). ``over``: the packet's own buffer (a view of a bytearray given up), decrypted
    where it lies, a piece at a time; nothing as big as the message is allocated."""
    if sym not in _KEYLEN or len(key) != _KEYLEN[sym]:
        raise DecryptionFailed("unsupported symmetric cipher")
    body = memoryview(seipd.body)[1:]
    if len(body) < 16 + 2 + 22:
        raise IntegrityError("encrypted data too short")
    dec = _cfb(key, False)
    if over and not body.readonly:
        piece = bytearray(_PIECE + 15)   # update_into wants room for one block more than it writes
        for at in range(0, len(body), _PIECE):
            part = body[at:at + _PIECE]
            if dec.update_into(part, piece) != len(part):
                raise IntegrityError("integrity check failed: no plaintext shown")
            part[:] = memoryview(piece)[:len(part)]
        n, plain = len(body), body
    else:
        plain = bytearray(len(body) + 15)
        n = dec.update_into(body, plain)
    if n != len(body) or dec.finalize():   # CFB is a stream: all of it, at once
        raise IntegrityError("integrity check failed: no plaintext shown")
    view = memoryview(plain)[:n].toreadonly()
    if view[-22:-20] != b"\xd3\x14":
        raise IntegrityError("integrity check failed: no valid MDC; no plaintext shown")
    digest = hashlib.sha1(view[:-20]).digest()
    if not hmac.compare_digest(digest, view[-20:]):
        raise IntegrityError("integrity check failed: the message was modified; no plaintext shown")
    return view[18:-22]


def parse_inner(plain: bytes | memoryview, limits: Limits, depth: int = 0,
                view: bool = False) -> tuple[bytes, str, str, list[bytes]]:
    """(literal data, filename, mode, signature packets) from a decrypted packet stream (bytes,
    or a view, whose packets are then read without copying them; ``view``: and its literal data
    is a view too, where it can be)."""
    pkts = P.read_packets(plain, max_packets=limits.max_packets)
    if len(pkts) == 1 and pkts[0].tag == P.COMPRESSED:
        if depth > 0:
            raise MalformedMessage("nested compression refused")
        return parse_inner(inflate(pkts[0], limits.max_plaintext), limits, depth + 1)
    literals = [p for p in pkts if p.tag == P.LITERAL]
    if len(literals) != 1 or any(p.tag not in (P.LITERAL, P.OPS, P.SIG, P.MARKER, P.PADDING) for p in pkts):
        raise MalformedMessage("unexpected packet sequence inside the encrypted message")
    body = literals[0].body
    if len(body) < 6:
        raise MalformedMessage("truncated literal data")
    mode, n = chr(body[0]), body[1]
    filename = bytes(body[2:2 + n]).decode("utf-8", "replace")
    data = body[2 + n + 4:] if view and isinstance(body, memoryview) else bytes(body[2 + n + 4:])
    if len(data) > limits.max_plaintext:
        raise LimitExceeded("plaintext exceeds the limit")
    return data, filename, mode, [bytes(p.raw) for p in pkts if p.tag == P.SIG]


def verify_signatures(data: bytes, sigs: list[bytes], lookup: CertLookup,
                      text_mode: bool = False) -> tuple[SignatureResult, ...]:
    out = []
    for raw in sigs:
        try:
            sp = docsig.parse(raw)
        except MalformedMessage:
            out.append(SignatureResult("invalid", None, "", 0.0, "unreadable signature"))
            continue
        key = lookup(sp.issuer_keyid, sp.issuer_fpr)
        if key is None:
            out.append(SignatureResult("unknown-key", sp.issuer_fpr, sp.issuer_keyid, sp.created,
                                       "signer's key is not known"))
            continue
        keyid = sp.issuer_keyid or next((c.keyid for c in (key.status.primary, *key.status.subkeys)
                                         if c.fingerprint == sp.issuer_fpr), "")
        reason = None
        if sp.type not in (0x00, 0x01):
            reason = "not a document signature"
        elif sp.hash_name in WEAK_HASHES:
            reason = f"weak hash {sp.hash_name}"
        elif not key.pgp.verify_data(keyid, data, sp):
            reason = "signature does not match the content"
        elif sp.expires is not None and time.time() >= sp.expires:
            reason = "signature expired"
        else:
            reason = key.status.signature_problem(keyid, sp.created)
        out.append(SignatureResult("invalid" if reason else "valid", key.fingerprint, keyid,
                                   sp.created, reason or "", key.status.uids))
    return tuple(out)


def _session_key(shape: P.EncryptedShape, keys: list[Key]) -> tuple[int, bytes] | None:
    """(cipher, session key) from the first PKESK one of ``keys`` opens; a hidden recipient's
    (key ID 0) is tried with every key."""
    for pk in shape.pkesks:
        wanted = pk.body[1:9].hex().upper()
        for key in keys:
            for kid in key.keyids if wanted == "0" * 16 else ({wanted} & key.keyids):
                session = key.pgp.decrypt_session_key(kid, pk.raw)
                if session:
                    return session
    return None


def decrypt(data: bytes | Handed, secret_keys: Iterable[Key], lookup: CertLookup, *,
            limits: Limits = Limits()) -> Decrypted:
    """Check, decrypt and verify; secret keys must be unlocked by the caller.

    Raises NotEncrypted, IntegrityError, DecryptionFailed, LimitExceeded or
    MalformedMessage; never returns partial plaintext.
    """
    shape, over = None, False
    if isinstance(data, Handed):
        over = data.over
        data, shape = data.take()
    if len(data) > limits.max_message:
        raise LimitExceeded("message exceeds the size limit")
    binary = A.unarmor_if_needed(data)
    del data   # binary itself when it was not armored
    if shape is None:
        shape = P.check_encrypted(memoryview(binary))   # the encrypted packet read in place
    if not shape.pkesks:
        raise DecryptionFailed("message is encrypted with a password only; not supported")
    session = _session_key(shape, list(secret_keys))
    if session is None:
        raise DecryptionFailed("message is not encrypted to any of our keys")
    plain = _decrypt_seipd(shape.seipd, *session, over=over)
    recipients = shape.recipient_keyids
    del shape   # the encrypted packets, no longer needed while the plaintext is read
    buffer, binary = (binary if over else None), None
    content, filename, mode, sigs = parse_inner(plain, limits, view=over)
    if buffer is not None:   # the binary given up: its buffer, cut to the literal data, is the content
        del plain
        content, plain = _moved_to_front(buffer, content), b""
    results = verify_signatures(content, sigs, lookup)
    return Decrypted(content, filename, mode, results, recipients, plain, tuple(sigs))


def _moved_to_front(buffer: bytearray, data: memoryview | bytes) -> bytearray | bytes:
    """``buffer`` holding ``data`` (a view into it) from its start and nothing more: moved a
    piece at a time (each copied out before it is written, never over what is still to be
    read), then cut. Where a view of the buffer is still alive it cannot be cut: a copy."""
    if not isinstance(data, memoryview):
        return data   # compressed: inflated into a buffer of its own
    size = len(data)
    for at in range(0, size, _PIECE):
        buffer[at:at + min(_PIECE, size - at)] = bytes(data[at:at + _PIECE])
    data.release()
    del data
    try:
        del buffer[size:]
    except BufferError:   # pragma: no cover - a view the read still holds
        return bytes(buffer[:size])
    return buffer


def check_encrypted(data: bytes) -> P.EncryptedShape:
    """Packet-shape check of an armored or binary message, without decrypting."""
    return P.check_encrypted(memoryview(A.unarmor_if_needed(data)))
