"""Messages: sign+encrypt, check-then-decrypt, integrity, limits, and gpg/sqop both ways.

Hostile messages are built in the test: the inner packet stream (literal,
compressed bombs, stripped MDC) is sealed in a real SEIPD packet to a real key
with ``seal()``, which uses only ``cryptography`` and the key's public PKESK
primitive, so the decryptor under test never helps build its own input.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import shutil
import subprocess
import time
import tracemalloc
import zlib
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # where OpenPGP's CFB mode lives since cryptography 47
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from securemail.crypto import armor as A
from securemail.crypto import keys, message, openpgp
from securemail.crypto import packets as P
from securemail.crypto.message import Limits
from securemail.errors import (DecryptionFailed, IntegrityError, KeyUnusable, LimitExceeded,
                               MalformedMessage, NotEncrypted, SecureMailError)

GPG = shutil.which("gpg")
SQOP = shutil.which("sqop")
needs_sqop = pytest.mark.skipif(SQOP is None, reason="sqop not installed")
MiB = 1 << 20
BOB_PW = "bob's passphrase"
# Every byte value, CR, LF, CRLF, NUL and a lone trailing CR: nothing may be normalised.
BINARY = bytes(range(256)) + b"line\r\nline\nline\r\x00\x00end\r\n\r\n" + os.urandom(3000) + b"\r"


# --- keys --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alice():
    return keys.Key(openpgp.generate("Alice <alice@example.org>", "ed25519", None, None))


@pytest.fixture(scope="module")
def bob():
    """RSA-3072, passphrase-protected, unlocked for the whole module."""
    key = keys.Key(openpgp.generate("Bob <bob@example.org>", "rsa3072", None, BOB_PW))
    with key.pgp.unlocked(BOB_PW):
        yield key


@pytest.fixture(scope="module")
def carol():
    return keys.Key(openpgp.generate("Carol <carol@example.org>", "ed25519", None, None))


@pytest.fixture
def by(request):
    """by('alice') -> the fixture's key; lets tests be parametrized over key types."""
    return request.getfixturevalue


def lookup_for(*ks: keys.Key):
    by_id = {kid: k.public() for k in ks for kid in k.keyids}
    return lambda keyid, fpr: by_id.get(keyid)


def nobody(keyid, fpr):
    return None


def revoked(pgp: openpgp.PgpKey, reason: str = "compromised") -> keys.Key:
    rev = openpgp.revoke(pgp, None, reason, "")
    pkts = P.read_packets(pgp.binary())
    return keys.load_key(pkts[0].raw + rev + b"".join(p.raw for p in pkts[1:]))


# --- building messages by hand --------------------------------------------------------------
def literal(data: bytes, mode: bytes = b"b", name: bytes = b"") -> bytes:
    return P.write_packet(P.LITERAL, mode + bytes([len(name)]) + name + b"\x00" * 4 + data)


def seal(inner: bytes, to: keys.Key, *, mdc: bytes | None = None) -> bytes:
    """PKESK + SEIPD v1 around ``inner``; ``mdc`` replaces the correct MDC packet (b"" drops it)."""
    session = os.urandom(32)
    comp = to.status.encryption_keys(time.time())[0]
    pkesk = to.public().pgp.encrypt_session_key(comp.keyid, 9, session)
    prefix = os.urandom(16)
    prefix += prefix[-2:]
    plain = prefix + inner
    plain += mdc if mdc is not None else b"\xd3\x14" + hashlib.sha1(plain + b"\xd3\x14").digest()
    enc = Cipher(algorithms.AES(session), CFB(b"\x00" * 16)).encryptor()
    return pkesk + P.write_packet(P.SEIPD, b"\x01" + enc.update(plain) + enc.finalize())


def compressed(algo: int, stream: bytes) -> bytes:
    body = {0: bytes, 1: _deflate, 2: zlib.compress, 3: bz2.compress}[algo](stream)
    return P.write_packet(P.COMPRESSED, bytes([algo]) + body)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _literal_header(size: int) -> bytes:
    """Header of a binary literal packet holding ``size`` data octets (five-octet length)."""
    return bytes([0xC0 | P.LITERAL, 0xFF]) + (size + 6).to_bytes(4, "big") + b"b\x00\x00\x00\x00\x00"


def zip_bomb(zeros_mib: int) -> bytes:
    """A compressed packet (ZIP, raw deflate) whose literal holds ``zeros_mib`` MiB of zeros.

    Built from one full-flushed deflate block repeated: each block restarts the
    compressor, so every copy inflates to the same 1 MiB on its own.
    """
    size = zeros_mib * MiB
    header = _literal_header(size)
    zero = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(header + zero) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH) == block
    assert zlib.decompressobj(-15).decompress(block) == zero
    stream = first + block * (zeros_mib - 1) + c.flush()
    assert len(stream) < size // 500
    return P.write_packet(P.COMPRESSED, b"\x01" + stream)


def bz2_bomb(zeros_mib: int) -> bytes:
    header = _literal_header(zeros_mib * MiB)
    c = bz2.BZ2Compressor(9)
    parts = [c.compress(header)] + [c.compress(bytes(MiB)) for _ in range(zeros_mib)] + [c.flush()]
    return P.write_packet(P.COMPRESSED, b"\x03" + b"".join(parts))


def seipd_offset(msg: bytes) -> int:
    """Offset of the SEIPD body's first ciphertext byte (after the version) in a binary message."""
    pos = 0
    for pkt in P.read_packets(msg):
        if pkt.tag == P.SEIPD:
            return pos + len(pkt.raw) - len(pkt.body) + 1
        pos += len(pkt.raw)
    raise AssertionError("no SEIPD")


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x40
    return bytes(b)


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("recipient,signer", [("alice", "alice"), ("bob", "bob"), ("alice", "bob"),
                                              ("bob", "alice")])
def test_round_trip_is_byte_exact_with_valid_signature(by, recipient, signer):
    to, sk = by(recipient), by(signer)
    armored = message.encrypt(BINARY, [(to.public(), "to@example.org")], signer=sk, filename="report.bin")
    assert A.dearmor(armored)[0] == "PGP MESSAGE"
    shape = message.check_encrypted(armored)
    assert shape.recipient_keyids == (to.status.subkeys[0].keyid,)
    out = message.decrypt(armored, [to], lookup_for(sk))
    assert out.data == BINARY and out.mode == "b" and out.filename == "report.bin"
    assert out.recipients == (to.status.subkeys[0].keyid,)
    (sig,) = out.signatures
    assert sig.status == "valid", sig.reason
    assert sig.signer == sk.fingerprint and sig.keyid == sk.status.primary.keyid
    assert out.signature is sig
    assert abs(sig.created - time.time()) < 600


@pytest.mark.parametrize("data", [b"", b"\x00", b"\r\n", os.urandom(MiB)],
                         ids=["empty", "nul", "crlf", "1MiB"])
def test_round_trip_sizes_binary_unsigned(alice, data):
    out = message.decrypt(message.encrypt(data, [(alice, "a")], armor=False), [alice], nobody)
    assert out.data == data and out.signatures == () and out.signature is None


def test_several_recipients_each_decrypt(alice, bob, carol):
    msg = message.encrypt(b"to three", [(alice.public(), "a"), (bob.public(), "b"), (carol.public(), "c"),
                                        (alice.public(), "a again")], armor=False)
    shape = P.check_encrypted(msg)
    assert len(shape.pkesks) == 3  # the duplicate recipient gets one PKESK
    for k in (alice, bob, carol):
        assert message.decrypt(msg, [k], nobody).data == b"to three"
    assert message.decrypt(msg, [carol, alice], nobody).data == b"to three"


def test_hidden_recipient_key_id_still_decrypts(alice, bob):
    msg = message.encrypt(b"hidden", [(bob.public(), "b"), (alice.public(), "a")], armor=False)
    pkts = P.read_packets(msg)
    hidden = b"".join(P.write_packet(p.tag, p.body[:1] + b"\x00" * 8 + p.body[9:]) if p.tag == P.PKESK
                      else p.raw for p in pkts)
    out = message.decrypt(hidden, [alice], nobody)
    assert out.data == b"hidden" and out.recipients == ("0" * 16, "0" * 16)


def test_encrypt_to_a_key_holding_its_secret(alice, bob):
    """Copy-to-self: the recipient Key carries its secret (message.encrypt uses its certificate)."""
    msg = message.encrypt(b"copy to self", [(alice, "alice@example.org"), (bob, "bob@example.org")])
    assert message.decrypt(msg, [alice], nobody).data == b"copy to self"
    assert message.decrypt(msg, [bob], nobody).data == b"copy to self"


def test_session_key_primitive_on_a_secret_key_raises_only_our_errors(alice):
    comp = alice.status.encryption_keys(time.time())[0]
    try:
        pkesk = alice.pgp.encrypt_session_key(comp.keyid, 9, bytes(32))
    except SecureMailError:
        return
    assert P.read_packets(pkesk)[0].tag == P.PKESK


# --- signatures -----------------------------------------------------------------------------------
def test_unknown_signer(alice, carol):
    out = message.decrypt(message.encrypt(b"x", [(alice.public(), "a")], signer=carol), [alice], nobody)
    (sig,) = out.signatures
    assert sig.status == "unknown-key" and sig.keyid == carol.status.primary.keyid
    assert out.data == b"x"


def test_revoked_signer_is_invalid(alice):
    signer_pgp = openpgp.generate("Dave <dave@example.org>", "ed25519", None, None)
    signer = keys.Key(signer_pgp)
    msg = message.encrypt(b"signed, then the key was revoked", [(alice.public(), "a")], signer=signer)
    out = message.decrypt(msg, [alice], lookup_for(revoked(signer_pgp)))
    (sig,) = out.signatures
    assert sig.status == "invalid" and "revoked" in sig.reason
    assert out.data == b"signed, then the key was revoked"  # content is shown, signature is not trusted


def test_signature_over_other_content_is_invalid(alice):
    ops, sig = message.sign_packets(b"what was signed", alice, time.time())
    out = message.decrypt(seal(ops + literal(b"what was sent") + sig, alice), [alice], lookup_for(alice))
    assert out.signatures[0].status == "invalid" and "does not match" in out.signatures[0].reason


def test_garbage_signature_packet_is_invalid_not_an_error(alice):
    inner = literal(b"data") + P.write_packet(P.SIG, b"\x04\x00\x16\x0a" + os.urandom(30))
    out = message.decrypt(seal(inner, alice), [alice], lookup_for(alice))
    assert out.data == b"data" and out.signatures[0].status == "invalid"


def test_signing_with_revoked_or_expired_own_key_is_refused(alice):
    pgp = openpgp.generate("Eve <eve@example.org>", "ed25519", timedelta(days=1), None)
    with pytest.raises(KeyUnusable):
        message.encrypt(b"x", [(alice.public(), "a")], signer=revoked(pgp))
    with pytest.raises(KeyUnusable):
        message.encrypt(b"x", [(alice.public(), "a")], signer=keys.Key(pgp), now=time.time() + 2 * 86400)


# --- refusing to encrypt ---------------------------------------------------------------------------
@pytest.fixture
def no_randomness(monkeypatch):
    """Fail if encryption gets as far as drawing a session key."""
    def boom(n):
        raise AssertionError("encryption started")
    monkeypatch.setattr(openpgp, "random_bytes", boom)


def test_encrypting_to_expired_key_produces_nothing(alice, no_randomness):
    expiring = keys.Key(openpgp.generate("Fay <fay@example.org>", "ed25519", timedelta(seconds=1), None))
    later = expiring.status.created + 10
    with pytest.raises(KeyUnusable, match="fay@example.org.*expired"):
        message.encrypt(b"secret", [(alice.public(), "alice@example.org"),
                                    (expiring.public(), "fay@example.org")], now=later)


@pytest.mark.parametrize("reason", ["none", "superseded", "compromised", "retired"])
def test_encrypting_to_revoked_key_produces_nothing(alice, no_randomness, reason):
    gone = revoked(openpgp.generate("Gil <gil@example.org>", "ed25519", None, None), reason)
    with pytest.raises(KeyUnusable, match="gil@example.org.*revoked"):
        message.encrypt(b"secret", [(alice.public(), "alice@example.org"),
                                    (gone.public(), "gil@example.org")])


def test_encrypting_to_no_one_is_refused(alice):
    with pytest.raises(SecureMailError):
        message.encrypt(b"secret", [])


# --- decrypting what is not for us, or was changed -------------------------------------------------------
def test_wrong_key_cannot_decrypt(alice, bob, carol):
    msg = message.encrypt(b"for alice", [(alice.public(), "a")])
    for keyset in ([carol], [bob], [], [alice.public()]):
        with pytest.raises(DecryptionFailed):
            message.decrypt(msg, keyset, nobody)


def test_locked_key_cannot_decrypt():
    pgp = openpgp.generate("Hal <hal@example.org>", "ed25519", None, "hal pw")
    key = keys.Key(pgp)
    msg = message.encrypt(b"x", [(key.public(), "h")])
    with pytest.raises(DecryptionFailed):
        message.decrypt(msg, [key], nobody)
    with pgp.unlocked("hal pw"):
        assert message.decrypt(msg, [key], nobody).data == b"x"


@pytest.mark.parametrize("which", ["alice", "bob"])
@pytest.mark.parametrize("where", ["prefix", "quick-check", "middle", "mdc-tag", "mdc-hash", "last"])
def test_bit_flip_in_ciphertext_is_an_integrity_error(by, which, where):
    key = by(which)
    secret = b"TOP SECRET payload " * 20
    msg = message.encrypt(secret, [(key.public(), "k")], signer=key, armor=False)
    start = seipd_offset(msg)
    at = {"prefix": start + 3, "quick-check": start + 16, "middle": (start + len(msg)) // 2,
          "mdc-tag": len(msg) - 22, "mdc-hash": len(msg) - 10, "last": len(msg) - 1}[where]
    with pytest.raises(IntegrityError) as err:
        message.decrypt(flip(msg, at), [key], lookup_for(key))
    assert b"TOP SECRET" not in str(err.value).encode() + (err.value.detail or "").encode()


def test_flip_in_pkesk_fails_decryption(alice):
    msg = message.encrypt(b"x", [(alice.public(), "a")], armor=False)
    with pytest.raises(DecryptionFailed):
        message.decrypt(flip(msg, seipd_offset(msg) - 10), [alice], nobody)


def test_truncated_or_extended_seipd_is_an_integrity_error(alice):
    msg = message.encrypt(b"some data to cut", [(alice.public(), "a")], armor=False)
    pkesk, seipd = P.read_packets(msg)
    for body in (seipd.body[:-1], seipd.body + b"\x00", seipd.body[:30], seipd.body[:1]):
        with pytest.raises(IntegrityError):
            message.decrypt(pkesk.raw + P.write_packet(P.SEIPD, body), [alice], nobody)


def test_downgrade_to_sed_is_refused_before_decryption(alice):
    msg = message.encrypt(b"efail", [(alice.public(), "a")], armor=False)
    pkesk, seipd = P.read_packets(msg)
    with pytest.raises(IntegrityError, match="no MDC"):
        message.decrypt(pkesk.raw + P.write_packet(P.SED, seipd.body[1:]), [alice], nobody)


@pytest.mark.parametrize("mdc", [b"", b"\xd3\x14" + b"\x00" * 20, b"\xd3\x15" + b"\x00" * 20],
                         ids=["stripped", "wrong-hash", "wrong-header"])
def test_missing_or_wrong_mdc_is_an_integrity_error(alice, mdc):
    with pytest.raises(IntegrityError):
        message.decrypt(seal(literal(b"no valid MDC " * 10), alice, mdc=mdc), [alice], nobody)


def test_sealed_plain_literal_round_trips(alice):
    """The hand-made sealing used by the hostile tests is itself accepted."""
    out = message.decrypt(seal(literal(b"hand made", name=b"x.txt"), alice), [alice], nobody)
    assert (out.data, out.filename) == (b"hand made", "x.txt")


def test_not_encrypted_input_is_refused(alice):
    for data in (b"plain text", literal(b"x"), A.armor(literal(b"x")),
                 A.armor(compressed(2, literal(b"x")))):
        with pytest.raises((NotEncrypted, MalformedMessage)):
            message.decrypt(data, [alice], nobody)


# --- limits and decompression ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", [0, 1, 2, 3], ids=["uncompressed", "zip", "zlib", "bzip2"])
def test_compressed_inner_stream_round_trips(alice, algo):
    ops, sig = message.sign_packets(BINARY, alice, time.time())
    msg = seal(compressed(algo, ops + literal(BINARY) + sig), alice)
    out = message.decrypt(msg, [alice], lookup_for(alice))
    assert out.data == BINARY and out.signatures[0].status == "valid"


def _peak_during(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("bomb,limit", [("zip-100MiB", MiB), ("zip-100MiB", Limits().max_plaintext),
                                        ("bzip2-20MiB", MiB)])
def test_compression_bomb_is_refused_with_bounded_memory(alice, bomb, limit):
    inner = zip_bomb(100) if bomb.startswith("zip") else bz2_bomb(20)
    msg = seal(inner, alice)
    assert len(msg) < 200_000
    limits = Limits(max_plaintext=limit)

    def run():
        with pytest.raises(LimitExceeded):
            message.decrypt(msg, [alice], nobody, limits=limits)

    t0 = time.perf_counter()
    peak = _peak_during(run)
    # zlib's bounded decompress collects its output in blocks and joins them, so the
    # peak is twice the limit; 2 MiB on top covers the ciphertext and its copies.
    assert peak < 2 * limit + 2 * MiB, f"peak {peak / MiB:.1f} MiB for a {limit / MiB:.0f} MiB limit"
    assert time.perf_counter() - t0 < 15


def test_plaintext_limit_boundary(alice):
    limits = Limits(max_plaintext=MiB)
    exact = message.encrypt(bytes(MiB), [(alice.public(), "a")], armor=False)
    assert len(message.decrypt(exact, [alice], nobody, limits=limits).data) == MiB
    over = message.encrypt(bytes(MiB + 1), [(alice.public(), "a")], armor=False)
    with pytest.raises(LimitExceeded):
        message.decrypt(over, [alice], nobody, limits=limits)
    small = seal(compressed(2, literal(bytes(MiB - 100))), alice)
    assert len(message.decrypt(small, [alice], nobody, limits=limits).data) == MiB - 100
    big = seal(compressed(2, literal(bytes(MiB + 1))), alice)
    with pytest.raises(LimitExceeded):
        message.decrypt(big, [alice], nobody, limits=limits)


def test_message_size_and_packet_count_limits(alice):
    msg = message.encrypt(bytes(5000), [(alice.public(), "a")])
    with pytest.raises(LimitExceeded):
        message.decrypt(msg, [alice], nobody, limits=Limits(max_message=len(msg) - 1))
    markers = P.write_packet(P.MARKER, b"PGP") * 50
    with pytest.raises(LimitExceeded):
        message.decrypt(seal(markers + literal(b"x"), alice), [alice], nobody, limits=Limits(max_packets=20))
    assert message.decrypt(seal(markers + literal(b"x"), alice), [alice], nobody).data == b"x"


@pytest.mark.parametrize("inner,why", [
    (compressed(2, compressed(2, literal(b"x"))), "nested compression"),
    (P.write_packet(P.COMPRESSED, b"\x07" + b"x" * 20), "unknown compression"),
    (P.write_packet(P.COMPRESSED, b"\x02" + b"not zlib at all"), "corrupt"),
    (P.write_packet(P.COMPRESSED, b"\x03" + b"not bzip2 at all"), "corrupt"),
    (P.write_packet(P.COMPRESSED, b""), "empty compressed"),
    (literal(b"a") + literal(b"b"), "unexpected packet sequence"),
    (P.write_packet(P.UID, b"x") + literal(b"a"), "unexpected packet sequence"),
    (P.write_packet(P.SIG, b"\x04"), "unexpected packet sequence"),
    (literal(b"a") + P.write_packet(P.SEIPD, b"\x01x"), "unexpected packet sequence"),
    (P.write_packet(P.LITERAL, b"b\x00\x00"), "truncated literal"),
    (b"\xcb\xff\x00\x00\x10\x00abc", "truncated"),
], ids=["nested", "unknown-algo", "bad-zlib", "bad-bzip2", "empty-compressed", "two-literals",
        "uid", "signature-only", "nested-seipd", "short-literal", "truncated-packet"])
def test_malformed_inner_stream(alice, inner, why):
    with pytest.raises(MalformedMessage, match=why):
        message.decrypt(seal(inner, alice), [alice], nobody)


# --- gpg, both ways ------------------------------------------------------------------------------
class Gpg:
    """gpg 2.2 in a private GNUPGHOME; status lines are kept for the assertions."""

    def __init__(self, home) -> None:
        self.home = str(home)
        os.chmod(self.home, 0o700)
        self.status = ""

    def run(self, *args: str, input: bytes | None = None, passphrase: str = "",
            check: bool = True) -> bytes:
        cmd = [GPG, "--homedir", self.home, "--batch", "--yes", "--no-tty", "--trust-model", "always",
               "--pinentry-mode", "loopback", "--passphrase", passphrase, "--status-fd", "2", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=60)
        self.status = proc.stderr.decode(errors="replace")
        if check:
            assert proc.returncode == 0, self.status
        return proc.stdout

    def has(self, keyword: str, *fields: str) -> bool:
        return any(line.startswith(f"[GNUPG:] {keyword}") and all(f in line.split() for f in fields)
                   for line in self.status.splitlines())

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory, alice, bob):
    if GPG is None:
        pytest.skip("gpg not installed")
    g = Gpg(tmp_path_factory.mktemp("gpgmsg"))
    g.run("--import", input=alice.armored())
    g.run("--import", input=bob.armored(), passphrase=BOB_PW)
    g.run("--quick-gen-key", "Stranger <stranger@example.org>", "ed25519", "default", "never")
    yield g
    g.close()


@pytest.mark.interop
@pytest.mark.parametrize("recipient", ["alice", "bob"])
def test_gpg_decrypts_our_message(gpg, by, recipient):
    key = by(recipient)
    msg = message.encrypt(BINARY, [(key.public(), "k")])
    out = gpg.run("--decrypt", input=msg, passphrase=BOB_PW)
    assert out == BINARY
    assert gpg.has("DECRYPTION_OKAY") and gpg.has("GOODMDC") and gpg.has("END_DECRYPTION")


@pytest.mark.interop
@pytest.mark.parametrize("signer", ["alice", "bob"])
def test_gpg_verifies_our_signed_and_encrypted_message(gpg, by, alice, signer):
    """Guards the one-pass signature field order (hash, then public-key algorithm; fixed in 13efb37)."""
    sk = by(signer)
    msg = message.encrypt(b"signed for gpg\r\n", [(alice.public(), "a")], signer=sk)
    ops = P.read_packets(message.decrypt(msg, [alice], nobody).packets)[0]
    assert ops.tag == P.OPS and ops.body[2] == 10 and ops.body[3] == (22 if signer == "alice" else 1)
    out = gpg.run("--decrypt", input=msg, check=False)
    assert out == b"signed for gpg\r\n"
    assert gpg.has("GOODSIG", sk.status.primary.keyid), gpg.status
    assert gpg.has("VALIDSIG", sk.fingerprint)


@pytest.mark.interop
@pytest.mark.parametrize("signer", ["alice", "bob"])
def test_gpg_verifies_our_detached_signature(gpg, tmp_path, by, signer):
    sk = by(signer)
    (tmp_path / "data").write_bytes(BINARY)
    (tmp_path / "data.asc").write_bytes(message.sign_detached(BINARY, sk))
    gpg.run("--verify", str(tmp_path / "data.asc"), str(tmp_path / "data"))
    assert gpg.has("GOODSIG", sk.status.primary.keyid) and gpg.has("VALIDSIG", sk.fingerprint)


@pytest.mark.interop
@pytest.mark.parametrize("recipient,signer,compress", [("alice", "bob", "none"), ("bob", "alice", "zip"),
                                                       ("alice", "bob", "zlib"), ("bob", "alice", "bzip2")])
def test_we_decrypt_gpg_signed_and_encrypted(gpg, tmp_path, by, alice, bob, compress, recipient, signer):
    to, sk = by(recipient), by(signer)
    path = tmp_path / "gpg-input.bin"
    path.write_bytes(BINARY)
    opts = ["-z", "0"] if compress == "none" else ["--compress-algo", compress, "-z", "9"]
    msg = gpg.run(*opts, "--armor", "-u", sk.fingerprint, "-r", to.fingerprint, "--sign", "--encrypt",
                  "-o", "-", str(path), passphrase=BOB_PW)
    out = message.decrypt(msg, [to], lookup_for(alice, bob))
    assert out.data == BINARY and out.filename == "gpg-input.bin" and out.mode == "b"
    (sig,) = out.signatures
    assert sig.status == "valid", sig.reason
    assert sig.signer == sk.fingerprint


@pytest.mark.interop
def test_we_decrypt_gpg_text_mode(gpg, alice):
    msg = gpg.run("--textmode", "-u", alice.fingerprint, "-r", alice.fingerprint, "--sign", "--encrypt",
                  input=b"line one\nline two\n")
    out = message.decrypt(msg, [alice], lookup_for(alice))
    assert out.mode == "t" and out.data.replace(b"\r\n", b"\n") == b"line one\nline two\n"
    assert out.signatures[0].status == "valid"


@pytest.mark.interop
def test_gpg_sha1_signature_is_invalid(gpg, alice):
    msg = gpg.run("--digest-algo", "SHA1", "-u", alice.fingerprint, "-r", alice.fingerprint, "--sign",
                  "--encrypt", input=b"sha1")
    (sig,) = message.decrypt(msg, [alice], lookup_for(alice)).signatures
    assert sig.status == "invalid" and "SHA1" in sig.reason


@pytest.mark.interop
def test_gpg_signer_we_do_not_know(gpg, alice):
    msg = gpg.run("-u", "stranger@example.org", "-r", alice.fingerprint, "--sign", "--encrypt",
                  input=b"from a stranger")
    out = message.decrypt(msg, [alice], lookup_for(alice))
    assert out.data == b"from a stranger" and out.signatures[0].status == "unknown-key"


@pytest.mark.interop
def test_gpg_hidden_recipient(gpg, alice):
    msg = gpg.run("-R", alice.fingerprint, "--encrypt", input=b"throw-keyids")
    assert P.check_encrypted(msg).recipient_keyids == ("0" * 16,)
    assert message.decrypt(msg, [alice], nobody).data == b"throw-keyids"


@pytest.mark.interop
def test_gpg_message_without_mdc_is_refused(gpg, alice):
    msg = gpg.run("--rfc2440", "-r", alice.fingerprint, "--encrypt", input=b"efail")
    assert [p.tag for p in P.read_packets(msg)] == [P.PKESK, P.SED]
    with pytest.raises(IntegrityError):
        message.decrypt(msg, [alice], nobody)


@pytest.mark.interop
def test_gpg_password_only_message_is_refused(gpg, alice):
    msg = gpg.run("--symmetric", input=b"password only", passphrase="pw")
    with pytest.raises(DecryptionFailed, match="password"):
        message.decrypt(msg, [alice], nobody)


# --- sqop ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqop_key(tmp_path_factory):
    if SQOP is None:
        pytest.skip("sqop not installed")
    secret = subprocess.run([SQOP, "generate-key", "Sam <sam@example.org>"], capture_output=True,
                            check=True, timeout=60).stdout
    return keys.load_key(secret)


@pytest.mark.interop
@needs_sqop
def test_we_decrypt_sqop_signed_message(tmp_path, alice, sqop_key):
    (tmp_path / "alice.asc").write_bytes(alice.public().armored())
    (tmp_path / "sam.key").write_bytes(sqop_key.armored())
    msg = subprocess.run([SQOP, "encrypt", "--sign-with", str(tmp_path / "sam.key"),
                          str(tmp_path / "alice.asc")],
                         input=BINARY, capture_output=True, check=True, timeout=60).stdout
    out = message.decrypt(msg, [alice], lookup_for(sqop_key))
    assert out.data == BINARY
    (sig,) = out.signatures
    assert sig.status == "valid", sig.reason
    assert sig.signer == sqop_key.fingerprint and sig.keyid == sqop_key.require_signing_key(time.time()).keyid


@pytest.mark.interop
@needs_sqop
def test_sqop_decrypts_our_message(tmp_path, sqop_key, alice):
    (tmp_path / "sam.key").write_bytes(sqop_key.armored())
    msg = message.encrypt(BINARY, [(sqop_key.public(), "sam@example.org")], signer=alice)
    out = subprocess.run([SQOP, "decrypt", str(tmp_path / "sam.key")], input=msg, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == BINARY
