"""Key validation: generated keys, passphrases, expiry, revocation and hostile certificates.

Keys come from three real sources: our own generator (PGPy), gpg 2.2 (weak
algorithms, SHA-1 self-signatures, signing subkeys, revoked user IDs) and sqop
(Sequoia's certify-only primary with a separate signing subkey). Broken keys are
made by editing real packets, never by hand-writing key material.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from securemail.crypto import armor as A
from securemail.crypto import docsig, keys, message, openpgp
from securemail.crypto import packets as P
from securemail.errors import KeyRefused, KeyUnusable, PassphraseError, SecureMailError

GPG = shutil.which("gpg")
SQOP = shutil.which("sqop")
needs_gpg = pytest.mark.skipif(GPG is None, reason="gpg not installed")
needs_sqop = pytest.mark.skipif(SQOP is None, reason="sqop not installed")
HARD, SOFT = ("none", "compromised"), ("superseded", "retired")


# --- packet helpers ------------------------------------------------------------------
def flip(raw: bytes, index: int = -1) -> bytes:
    b = bytearray(raw)
    b[index] ^= 0x01
    return bytes(b)


def replace_packet(binary: bytes, index: int, raw: bytes) -> bytes:
    return b"".join(raw if i == index else p.raw for i, p in enumerate(P.read_packets(binary)))


def with_revocation(binary: bytes, revocation: bytes) -> bytes:
    """The key with a revocation signature placed right after its primary key packet."""
    pkts = P.read_packets(binary)
    return pkts[0].raw + revocation + b"".join(p.raw for p in pkts[1:])


def sig_areas(body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A v4 signature body split into (head, hashed area, unhashed area, tail)."""
    hashed_end = 6 + int.from_bytes(body[4:6], "big")
    unhashed_end = hashed_end + 2 + int.from_bytes(body[hashed_end:hashed_end + 2], "big")
    return body[:4], body[6:hashed_end], body[hashed_end + 2:unhashed_end], body[unhashed_end:]


def subpackets(area: bytes) -> list[tuple[int, bytes]]:
    """(type without the critical bit, the whole subpacket as bytes) for each subpacket."""
    out, i = [], 0
    while i < len(area):
        o = area[i]
        if o < 192:
            n, used = o, 1
        elif o < 255:
            n, used = ((o - 192) << 8) + area[i + 1] + 192, 2
        else:
            n, used = int.from_bytes(area[i + 1:i + 5], "big"), 5
        out.append((area[i + used] & 0x7F, area[i:i + used + n]))
        i += used + n
    return out


def sig_packet(head: bytes, hashed: bytes, unhashed: bytes, tail: bytes) -> bytes:
    return P.write_packet(P.SIG, head + len(hashed).to_bytes(2, "big") + hashed
                          + len(unhashed).to_bytes(2, "big") + unhashed + tail)


def edit_sig(raw_sig: bytes, *, drop_hashed=(), drop_unhashed=(), hash_algo=None) -> bytes:
    (pkt,) = P.read_packets(raw_sig)
    head, hashed, unhashed, tail = sig_areas(pkt.body)
    hashed = b"".join(s for t, s in subpackets(hashed) if t not in drop_hashed)
    unhashed = b"".join(s for t, s in subpackets(unhashed) if t not in drop_unhashed)
    if hash_algo is not None:
        head = head[:3] + bytes([hash_algo])
    return sig_packet(head, hashed, unhashed, tail)


def s2k_fields(secret_key_body: bytes) -> tuple[int, bytes]:
    """(S2K usage octet, the octets after it) of a v4 secret (sub)key packet body."""
    body = secret_key_body
    assert body[0] == 4
    algo, pos = body[5], 6

    def mpi(p: int) -> int:
        return p + 2 + (int.from_bytes(body[p:p + 2], "big") + 7) // 8

    if algo in (1, 2, 3):                 # RSA: n, e
        pos = mpi(mpi(pos))
    elif algo in (19, 22):                # ECDSA, EdDSA: OID, point
        pos = mpi(pos + 1 + body[pos])
    elif algo == 18:                      # ECDH: OID, point, KDF parameters
        pos = mpi(pos + 1 + body[pos])
        pos += 1 + body[pos]
    else:
        raise AssertionError(f"no parser for algorithm {algo}")
    return body[pos], body[pos + 1:]


def lookup_for(*ks: keys.Key):
    by_id = {kid: k.public() for k in ks for kid in k.keyids}
    return lambda keyid, fpr: by_id.get(keyid)


# --- real gpg in a throwaway home ----------------------------------------------------
class Gpg:
    """gpg 2.2 in a private GNUPGHOME; no passphrases, never the user's keyring."""

    def __init__(self, home) -> None:
        self.home = str(home)
        os.chmod(self.home, 0o700)

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        cmd = [GPG, "--homedir", self.home, "--batch", "--yes", "--no-tty", "--pinentry-mode",
               "loopback", "--passphrase", "", "--status-fd", "2", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        self.status = proc.stderr.decode(errors="replace")
        return proc.stdout

    def generate(self, uid: str, algo: str, usage: str = "default", expire: str = "never",
                 *opts: str) -> str:
        self.run(*opts, "--quick-gen-key", uid, algo, usage, expire)
        return next(line.split()[-1] for line in self.status.splitlines() if "KEY_CREATED" in line)

    def add_key(self, fpr: str, algo: str, usage: str, expire: str = "never") -> None:
        self.run("--quick-add-key", fpr, algo, usage, expire)

    def export(self, *fprs: str, secret: bool = False) -> bytes:
        return self.run("--export-secret-keys" if secret else "--export", *fprs)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True,
                       timeout=30)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory):
    if GPG is None:
        pytest.skip("gpg not installed")
    g = Gpg(tmp_path_factory.mktemp("gpgkeys"))
    yield g
    g.close()


# --- keys we generate ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ed():
    return openpgp.generate("Dr. Alice Example <Alice@Example.ORG>", "ed25519", None, None)


@pytest.fixture(scope="module")
def rsa():
    return openpgp.generate("Bob <bob@example.org>", "rsa3072", None, "bob passphrase")


@pytest.fixture(scope="module")
def dana():
    """Unprotected, so the revocation tests do not pay for S2K each time."""
    return openpgp.generate("Dana <dana@example.org>", "ed25519", None, None)


@pytest.fixture(scope="module")
def protected_ed():
    return openpgp.generate("Carol <carol@example.org>", "ed25519", None, "carol passphrase")


@pytest.mark.parametrize("which,algo,bits,enc_algo", [("ed", "ed25519", 256, "cv25519"),
                                                      ("rsa", "rsa", 3072, "rsa")])
def test_generated_key_is_valid_with_encryption_subkey_and_signing_key(request, which, algo, bits, enc_algo):
    pgp = request.getfixturevalue(which)
    key = keys.Key(pgp)
    st, now = key.status, time.time()
    assert st.state == "valid" and key.state_at(now) == "valid"
    assert (st.algorithm, st.bits) == (algo, bits)
    assert st.expires is None and st.revocation is None
    assert abs(st.created - now) < 600
    assert len(st.subkeys) == 1 and st.subkeys[0].algorithm == enc_algo
    enc = key.require_encryption_keys(now, "x")
    assert [c.keyid for c in enc] == [st.subkeys[0].keyid]
    assert enc[0].flags & (keys.FLAG_ENC_COMMS | keys.FLAG_ENC_STORAGE)
    assert key.require_signing_key(now).keyid == st.primary.keyid
    assert st.primary.flags & keys.FLAG_SIGN and st.primary.flags & keys.FLAG_CERTIFY
    assert key.keyids == {st.primary.keyid, st.subkeys[0].keyid}
    assert key.fingerprint.endswith(st.primary.keyid) and len(key.fingerprint) == 40


def test_uids_and_addresses(ed):
    st = keys.Key(ed).status
    assert st.uids == ("Dr. Alice Example <Alice@Example.ORG>",)
    assert st.addresses == ("alice@example.org",)
    assert keys.Key(openpgp.generate("Just A Name", "ed25519", None, None)).status.addresses == ()


def test_unknown_algorithm_is_refused():
    with pytest.raises(KeyRefused):
        openpgp.generate("X <x@y>", "rsa1024", None, None)


def test_armored_round_trip_public_and_secret(ed):
    key = keys.Key(ed)
    secret = keys.load_key(key.armored())
    assert secret.is_secret and secret.fingerprint == key.fingerprint
    assert A.dearmor(key.armored())[0] == "PGP PRIVATE KEY BLOCK"
    public = key.public()
    assert not public.is_secret and A.dearmor(public.armored())[0] == "PGP PUBLIC KEY BLOCK"
    again = keys.load_key(public.binary())
    assert not again.is_secret and again.status.uids == key.status.uids
    assert P.read_packets(public.binary())[0].tag == P.PUBKEY


# --- passphrases ------------------------------------------------------------------------
@pytest.mark.parametrize("which,pw", [("protected_ed", "carol passphrase"), ("rsa", "bob passphrase")])
def test_passphrase_protection(request, which, pw):
    pgp = keys.load_key(request.getfixturevalue(which).armored()).pgp  # as stored on disk
    assert pgp.is_secret and pgp.is_protected
    with pytest.raises(PassphraseError):
        with pgp.unlocked("wrong " + pw):
            pass
    with pytest.raises(PassphraseError):
        with pgp.unlocked(None):
            pass
    key = keys.Key(pgp)
    with pgp.unlocked(pw):
        sig = message.sign_detached(b"signed with the right passphrase", key, armor=False)
    (res,) = message.verify_signatures(b"signed with the right passphrase", [sig], lookup_for(key))
    assert res.status == "valid", res.reason


@pytest.mark.parametrize("which", ["protected_ed", "rsa"])
def test_protected_secret_packets_use_s2k(request, which):
    binary = A.dearmor(request.getfixturevalue(which).armored())[1]
    secret = [p for p in P.read_packets(binary) if p.tag in (P.SECKEY, P.SECSUBKEY)]
    assert [p.tag for p in secret] == [P.SECKEY, P.SECSUBKEY]
    for pkt in secret:
        usage, rest = s2k_fields(pkt.body)
        assert usage in (254, 253), f"secret packet not protected (usage {usage})"
        assert rest[0] == 9                 # AES-256
        assert rest[1] == 3                 # iterated and salted S2K
        assert rest[2] in (8, 10)           # SHA-256 / SHA-512


def test_unprotected_secret_packets_have_usage_zero(ed):
    for pkt in P.read_packets(ed.binary()):
        if pkt.tag in (P.SECKEY, P.SECSUBKEY):
            assert s2k_fields(pkt.body)[0] == 0
    assert not ed.is_protected


def test_public_key_cannot_be_unlocked(ed):
    with pytest.raises(PassphraseError):
        with ed.public().unlocked(None):
            pass


def test_revoke_needs_the_passphrase(protected_ed):
    with pytest.raises(PassphraseError):
        openpgp.revoke(protected_ed, "wrong", "none", "")
    rev = openpgp.revoke(protected_ed, "carol passphrase", "retired", "")
    assert keys.load_key(with_revocation(protected_ed.binary(), rev)).status.state == "revoked"


@pytest.mark.parametrize("which", ["protected_ed", "rsa"])
def test_signing_with_a_locked_key_raises_passphrase_error(request, which):
    key = keys.Key(request.getfixturevalue(which))
    with pytest.raises(PassphraseError):
        message.sign_detached(b"data", key)


# --- expiry -----------------------------------------------------------------------------
def test_expired_key_refuses_encryption():
    pgp = openpgp.generate("Shortlived <short@example.org>", "ed25519", timedelta(seconds=1), None)
    key = keys.Key(pgp)
    st = key.status
    assert st.expires == st.created + 1
    later = st.created + 5
    assert key.state_at(later) == "expired"
    assert st.encryption_keys(later) == [] and st.signing_keys(later) == []
    with pytest.raises(KeyUnusable, match="expired"):
        key.require_encryption_keys(later, "short@example.org")
    with pytest.raises(KeyUnusable):
        key.require_signing_key(later)
    while time.time() < st.expires + 0.05:  # at most ~1 s: wait for the real expiry
        time.sleep(0.05)
    reloaded = keys.load_key(pgp.public().binary())
    assert reloaded.status.state == "expired"
    with pytest.raises(KeyUnusable, match="expired"):
        reloaded.require_encryption_keys(time.time(), "short@example.org")


def test_key_with_lifetime_is_valid_until_it_expires():
    key = keys.Key(openpgp.generate("Year <y@example.org>", "ed25519", timedelta(days=365), None))
    st = key.status
    assert st.state == "valid" and st.expires == st.created + 365 * 86400
    assert key.require_encryption_keys(st.created + 364 * 86400)
    assert st.encryption_keys(st.created + 366 * 86400) == []  # the primary's expiry bounds the subkey
    with pytest.raises(KeyUnusable):
        key.require_encryption_keys(st.created + 366 * 86400)


# --- revocation ---------------------------------------------------------------------------
@pytest.mark.parametrize("reason,code", [("none", 0), ("superseded", 1), ("compromised", 2),
                                         ("retired", 3)])
def test_revoked_key_refuses_encryption_and_signing(dana, reason, code):
    rev = openpgp.revoke(dana, None, reason, "left the office")
    (pkt,) = P.read_packets(rev)
    assert pkt.tag == P.SIG and pkt.body[1] == keys.KEY_REVOCATION
    key = keys.load_key(with_revocation(dana.public().binary(), rev))
    st = key.status
    assert st.state == "revoked" and key.state_at(time.time()) == "revoked"
    assert st.revocation.code == code and st.revocation.text == "left the office"
    assert st.revocation.hard == (reason in HARD)
    assert st.encryption_keys(time.time()) == []
    with pytest.raises(KeyUnusable, match="revoked"):
        key.require_encryption_keys(time.time(), "dana@example.org")
    secret = keys.load_key(with_revocation(dana.binary(), rev))
    assert secret.is_secret and secret.status.state == "revoked"
    with pytest.raises(KeyUnusable):
        secret.require_signing_key(time.time())


@pytest.mark.parametrize("reason", HARD + SOFT)
def test_signatures_made_before_a_revocation(reason):
    pgp = openpgp.generate("Dave <dave@example.org>", "ed25519", None, None)
    kid = keys.Key(pgp).status.primary.keyid
    data = b"signed before and after the revocation"
    rev = openpgp.revoke(pgp, None, reason, "")
    revoked = keys.load_key(with_revocation(pgp.public().binary(), rev))
    at = revoked.status.revocation.at

    def verify(t: float):
        sig = pgp.sign_data(kid, data, created=datetime.fromtimestamp(t, timezone.utc))
        (res,) = message.verify_signatures(data, [sig], lookup_for(revoked))
        return res

    before, after = verify(at - 30), verify(at + 30)
    assert after.status == "invalid" and "revoked" in after.reason
    assert revoked.status.signature_problem(kid, at + 30) == "signer key revoked"
    if reason in HARD:   # no reason or key compromised: nothing the key ever signed is trusted
        assert before.status == "invalid" and "revoked" in before.reason
        assert revoked.status.signature_problem(kid, at - 30) == "signer key revoked"
    else:                # superseded or retired: earlier signatures stay valid
        assert before.status == "valid", before.reason
        assert revoked.status.signature_problem(kid, at - 30) is None


def test_revocation_by_another_key_is_ignored(ed):
    other = openpgp.generate("Mallory <m@example.org>", "ed25519", None, None)
    foreign = openpgp.revoke(other, None, "compromised", "")
    key = keys.load_key(with_revocation(ed.public().binary(), foreign))
    assert key.status.state == "valid" and key.status.revocation is None


def test_forged_revocation_claiming_our_key_id_does_not_revoke(ed):
    """A revocation signed by another key but naming our key ID must never count."""
    other = openpgp.generate("Mallory <m@example.org>", "ed25519", None, None)
    ours = keys.Key(ed).status.primary.keyid
    forged = openpgp.revoke(other, None, "compromised", "")
    head, hashed, unhashed, tail = sig_areas(P.read_packets(forged)[0].body)
    hashed = b"".join(s for t, s in subpackets(hashed) if t != 33)       # issuer fingerprint
    unhashed = b"".join(s for t, s in subpackets(unhashed) if t != 16) + b"\x09\x10" + bytes.fromhex(ours)
    result = keys.load_keys(with_revocation(ed.public().binary(), sig_packet(head, hashed, unhashed, tail)))
    assert len(result) == 1
    assert isinstance(result[0], KeyRefused) or result[0].status.state == "valid"


# --- broken and hostile certificates ----------------------------------------------------------
@pytest.mark.parametrize("which", ["ed", "rsa"])
@pytest.mark.parametrize("where", ["user-id", "self-signature-mpi", "self-signature-hashed"])
def test_broken_self_signature_is_refused(request, which, where):
    public = request.getfixturevalue(which).public().binary()
    pkts = P.read_packets(public)
    assert [p.tag for p in pkts[:3]] == [P.PUBKEY, P.UID, P.SIG]
    if where == "user-id":
        data = replace_packet(public, 1, flip(pkts[1].raw))
    elif where == "self-signature-mpi":
        data = replace_packet(public, 2, flip(pkts[2].raw))
    else:  # the key flags byte inside the hashed area
        head, hashed, unhashed, tail = sig_areas(pkts[2].body)
        flags_at = hashed.index(b"\x02\x1b") + 2
        hashed = hashed[:flags_at] + bytes([hashed[flags_at] | keys.FLAG_ENC_COMMS]) + hashed[flags_at + 1:]
        data = replace_packet(public, 2, sig_packet(head, hashed, unhashed, tail))
    (result,) = keys.load_keys(data)
    assert isinstance(result, KeyRefused) and "broken self-signature" in str(result)
    with pytest.raises(KeyRefused, match="broken self-signature"):
        keys.load_key(data)


def test_broken_subkey_binding_drops_the_subkey(ed):
    public = ed.public().binary()
    pkts = P.read_packets(public)
    assert pkts[4].tag == P.SIG and pkts[3].tag == P.PUBSUBKEY
    key = keys.load_key(replace_packet(public, 4, flip(pkts[4].raw)))
    assert key.status.subkeys == ()
    with pytest.raises(KeyUnusable, match="no valid encryption subkey"):
        key.require_encryption_keys(time.time(), "alice@example.org")


def test_subkey_without_binding_is_not_used(ed):
    pkts = P.read_packets(ed.public().binary())
    key = keys.load_key(b"".join(p.raw for p in pkts[:4]))  # subkey packet, binding left off
    assert key.status.encryption_keys(time.time()) == []


def test_ten_thousand_user_ids_are_refused_quickly(ed):
    pkts = P.read_packets(ed.public().binary())
    uids = b"".join(P.write_packet(P.UID, f"User {n} <user{n}@example.org>".encode()) for n in range(10_000))
    data = pkts[0].raw + uids + b"".join(p.raw for p in pkts[1:])
    assert len(data) > 100_000
    for blob in (data, A.armor(data, "PGP PUBLIC KEY BLOCK")):
        t0 = time.perf_counter()
        (result,) = keys.load_keys(blob)
        assert isinstance(result, KeyRefused) and "user IDs" in str(result)
        assert time.perf_counter() - t0 < 3


def test_user_id_limit_boundary(ed):
    pkts = P.read_packets(ed.public().binary())
    extra = lambda n: b"".join(P.write_packet(P.UID, f"U{i} <u{i}@x.org>".encode()) for i in range(n))
    rest = b"".join(p.raw for p in pkts[1:])
    over = pkts[0].raw + extra(openpgp.MAX_USER_IDS) + rest      # 101 in all
    assert isinstance(keys.load_keys(over)[0], KeyRefused)
    at = pkts[0].raw + extra(openpgp.MAX_USER_IDS - 1) + rest    # 100: unsigned ones are ignored
    assert keys.load_key(at).status.uids == keys.Key(ed).status.uids


def test_key_data_over_one_mebibyte_is_refused(ed):
    pkts = P.read_packets(ed.public().binary())
    data = pkts[0].raw + P.write_packet(P.UID, b"x" * (1 << 20)) + b"".join(p.raw for p in pkts[1:])
    t0 = time.perf_counter()
    with pytest.raises(KeyRefused, match="too large"):
        keys.load_keys(data)
    assert time.perf_counter() - t0 < 1


def test_trust_packets_are_ignored(ed):
    pkts = P.read_packets(ed.public().binary())
    trust = P.write_packet(P.TRUST, b"\x00\x00")
    data = b"".join(p.raw + (trust if p.tag in (P.UID, P.SIG) else b"") for p in pkts)
    assert keys.load_key(data).fingerprint == ed.fingerprint


def test_data_that_is_not_a_key_is_refused(ed):
    with pytest.raises(KeyRefused, match="primary key"):
        keys.load_keys(P.write_packet(P.UID, b"A <a@b>") + ed.public().binary())
    with pytest.raises(KeyRefused, match="no OpenPGP key"):
        keys.load_keys(b"-----BEGIN PGP junk\n")
    with pytest.raises(KeyRefused, match="expected one key"):
        keys.load_key(ed.public().binary() * 2)


@pytest.mark.parametrize("data", [b"garbage", b"", b"\x99\x00",
                                  A.armor(b"\x01\x02", "PGP PUBLIC KEY BLOCK")])
def test_garbage_raises_only_securemail_errors(data):
    with pytest.raises(SecureMailError):
        keys.load_keys(data)


def test_garbage_key_data_is_key_refused():
    with pytest.raises(KeyRefused):
        keys.load_keys(b"garbage")


def _hostile_variants(public: bytes) -> dict[str, bytes]:
    pkts = P.read_packets(public)
    no_issuer = b"".join(edit_sig(p.raw, drop_unhashed={16}) if p.tag == P.SIG else p.raw for p in pkts)
    no_created = replace_packet(public, 4, edit_sig(pkts[4].raw, drop_hashed={2}))
    bad_hash = replace_packet(public, 2, edit_sig(pkts[2].raw, hash_algo=99))
    return {"no-issuer-key-id": no_issuer, "no-creation-time": no_created, "unknown-hash": bad_hash}


@pytest.mark.parametrize("variant", ["no-issuer-key-id", "no-creation-time", "unknown-hash"])
def test_hostile_signature_subpackets_raise_only_securemail_errors(ed, variant):
    data = _hostile_variants(ed.public().binary())[variant]
    try:
        result = keys.load_keys(data)
    except SecureMailError:
        return
    assert len(result) == 1  # a KeyRefused or, for the issuer-less one, a valid key


# --- weak keys made by gpg ---------------------------------------------------------------------
@needs_gpg
def test_gpg_rsa1024_is_refused(gpg):
    fpr = gpg.generate("Weak <weak@example.org>", "rsa1024")
    (result,) = keys.load_keys(gpg.export(fpr))
    assert isinstance(result, KeyRefused) and "RSA-1024" in str(result)
    assert result.detail == fpr


@needs_gpg
def test_gpg_dsa_is_refused(gpg):
    fpr = gpg.generate("Dsa <dsa@example.org>", "dsa2048")
    (result,) = keys.load_keys(gpg.export(fpr))
    assert isinstance(result, KeyRefused) and "DSA" in str(result)


@needs_gpg
@pytest.mark.parametrize("sub_algo", ["elg1024", "rsa1024"])  # ElGamal is refused at any size
def test_gpg_weak_encryption_subkey_is_not_used(gpg, sub_algo):
    fpr = gpg.generate(f"Sub {sub_algo} <sub-{sub_algo}@example.org>", "ed25519", "sign")
    gpg.add_key(fpr, sub_algo, "encr")
    key = keys.load_key(gpg.export(fpr))
    assert key.status.state == "valid" and key.status.subkeys == ()
    with pytest.raises(KeyUnusable, match="no valid encryption subkey"):
        key.require_encryption_keys(time.time(), "sub@example.org")


@needs_gpg
def test_gpg_sha1_self_signature_is_refused(gpg):
    fpr = gpg.generate("Sha1 <sha1@example.org>", "ed25519", "default", "never", "--cert-digest-algo", "SHA1")
    sigs = [p for p in P.read_packets(gpg.export(fpr)) if p.tag == P.SIG]
    assert sigs and all(p.body[3] == 2 for p in sigs)  # SHA-1, as asked
    (result,) = keys.load_keys(gpg.export(fpr))
    assert isinstance(result, KeyRefused) and "weak hash" in str(result)


@needs_gpg
def test_gpg_sha1_key_refreshed_with_sha256_is_accepted(gpg):
    fpr = gpg.generate("Legacy <legacy@example.org>", "ed25519", "default", "never",
                       "--cert-digest-algo", "SHA1")
    gpg.run("--cert-digest-algo", "SHA256", "--quick-set-expire", fpr, "5y")
    key = keys.load_key(gpg.export(fpr))
    assert key.status.state == "valid" and key.status.uids == ("Legacy <legacy@example.org>",)
    assert key.status.expires is not None


@needs_gpg
def test_gpg_key_with_signing_subkey_and_expiring_encryption_subkey(gpg):
    fpr = gpg.generate("Gina <gina@example.org>", "ed25519", "cert")
    gpg.add_key(fpr, "ed25519", "sign")
    gpg.add_key(fpr, "cv25519", "encr", "1d")
    key = keys.load_key(gpg.export(fpr, secret=True))
    st, now = key.status, time.time()
    assert st.primary.flags == keys.FLAG_CERTIFY
    signer = key.require_signing_key(now)
    assert signer.keyid != st.primary.keyid and signer.backsig and signer.algorithm == "ed25519"
    sig = message.sign_detached(b"gina", key, armor=False)
    assert docsig.parse(sig).issuer_keyid == signer.keyid
    assert message.verify_signatures(b"gina", [sig], lookup_for(key))[0].status == "valid"
    assert key.require_encryption_keys(now, "gina")
    assert key.state_at(now + 2 * 86400) == "valid"  # the primary does not expire ...
    with pytest.raises(KeyUnusable, match="no valid encryption subkey"):  # ... its subkey does
        key.require_encryption_keys(now + 2 * 86400, "gina")


@needs_gpg
@pytest.mark.parametrize("how", ["dropped", "corrupted"])
def test_signing_subkey_without_valid_back_signature_is_not_used(gpg, how):
    fpr = gpg.generate(f"Back {how} <back-{how}@example.org>", "ed25519", "cert")
    gpg.add_key(fpr, "ed25519", "sign")
    public = gpg.export(fpr)
    pkts = P.read_packets(public)
    i = next(i for i, p in enumerate(pkts) if p.tag == P.SIG and p.body[1] == keys.SUBKEY_BINDING)
    head, hashed, unhashed, tail = sig_areas(pkts[i].body)
    embedded = [s for t, s in subpackets(unhashed) if t == 32]
    assert embedded, "gpg puts the back-signature in the unhashed area"
    if how == "dropped":
        unhashed = b"".join(s for t, s in subpackets(unhashed) if t != 32)
    else:
        unhashed = unhashed.replace(embedded[0], flip(embedded[0]))
    key = keys.load_key(replace_packet(public, i, sig_packet(head, hashed, unhashed, tail)))
    assert keys.load_key(public).status.signing_keys(time.time())  # the original is fine
    assert key.status.signing_keys(time.time()) == []
    with pytest.raises(KeyUnusable, match="signing key"):
        key.require_signing_key(time.time())


@needs_gpg
def test_gpg_revoked_user_id_is_dropped(gpg):
    fpr = gpg.generate("Old <old@example.org>", "ed25519")
    gpg.run("--quick-add-uid", fpr, "New <new@example.org>")
    gpg.run("--quick-revoke-uid", fpr, "Old <old@example.org>")
    key = keys.load_key(gpg.export(fpr))
    assert key.status.uids == ("New <new@example.org>",)
    assert key.status.addresses == ("new@example.org",)


@needs_gpg
def test_several_keys_in_one_file(gpg, ed, rsa):
    good = gpg.generate("Multi <multi@example.org>", "ed25519")
    weak = gpg.generate("Multi weak <multi-weak@example.org>", "rsa1024")
    one_block = gpg.run("--armor", "--export", good, weak)
    assert one_block.count(b"-----BEGIN") == 1
    results = keys.load_keys(one_block)
    assert isinstance(results[0], keys.Key) and results[0].fingerprint == good
    assert isinstance(results[1], KeyRefused) and results[1].detail == weak
    ours = keys.Key(ed).public().armored() + b"\n" + keys.Key(rsa).public().armored()
    for data in (ours, b"\r\n  " + ours + b"\nThanks\n",
                 ed.public().binary() + rsa.public().binary()):
        assert [k.fingerprint for k in keys.load_keys(data)] == [ed.fingerprint, rsa.fingerprint]
    secret_and_public = ed.armored() + rsa.public().armored()
    loaded = keys.load_keys(secret_and_public)
    assert [k.is_secret for k in loaded] == [True, False]


# --- a key from Sequoia ----------------------------------------------------------------------------
@needs_sqop
def test_sqop_key_uses_its_signing_subkey(tmp_path):
    secret = subprocess.run([SQOP, "generate-key", "Cleo <cleo@example.org>"], capture_output=True,
                            check=True, timeout=60).stdout
    cert = subprocess.run([SQOP, "extract-cert"], input=secret, capture_output=True, check=True,
                          timeout=60).stdout
    key = keys.load_key(secret)
    st, now = key.status, time.time()
    assert st.state == "valid" and st.uids == ("Cleo <cleo@example.org>",)
    assert st.primary.flags == keys.FLAG_CERTIFY and st.expires is not None
    (signing,) = st.signing_keys(now)
    assert signing.keyid != st.primary.keyid and signing.backsig
    assert [c.algorithm for c in st.encryption_keys(now)] == ["cv25519"]
    data = b"signed by Sequoia's signing subkey\r\n\x00"
    sig = message.sign_detached(data, key)
    assert docsig.parse(A.dearmor(sig)[1]).issuer_keyid == signing.keyid
    assert message.verify_signatures(data, [A.dearmor(sig)[1]], lookup_for(key))[0].status == "valid"
    (tmp_path / "sig.asc").write_bytes(sig)
    (tmp_path / "cert.asc").write_bytes(cert)
    out = subprocess.run([SQOP, "verify", str(tmp_path / "sig.asc"), str(tmp_path / "cert.asc")],
                         input=data, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert signing.fingerprint.encode() in out.stdout and key.fingerprint.encode() in out.stdout
