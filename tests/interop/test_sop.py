"""securemail-sop against sqop both ways (encrypt, sign, inline-sign) and its SOP exit codes.

Our SOP tool runs as ``python -m cli.sop`` in a subprocess, driven by the same
SopPeer harness as the real peers, so both sides see identical argv shapes.
Tests needing sqop skip with the reason when it is not installed; the exit-code
tests need only our tool; the inline packet-shape test runs signing.py in process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from securemail.crypto import keys, openpgp, signing
from securemail.crypto import packets as P
from securemail.errors import MalformedMessage

from .peers import TIMEOUT, PeerFailure, SopPeer, fingerprint

ROOT = Path(__file__).resolve().parents[2]
ARGV = [sys.executable, "-m", "cli.sop"]
DATA = b"Vertraulich: line one\r\nline two\n\x00\xff binary tail"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ([0-9A-F]{40}) ([0-9A-F]{40}) mode:binary$")
NO_SIGNATURE, CANNOT_DECRYPT, UNSUPPORTED_OPTION, BAD_DATA = 3, 29, 37, 41
MISSING_INPUT, UNSUPPORTED_SUBCOMMAND = 61, 69


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


@pytest.fixture(scope="module")
def ours():
    peer = SopPeer("securemail-sop", ARGV, key_algos=("default",), env=_env(),
                   verify_out="--verifications-out")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def me(ours):
    """(key, cert, fpr) made by our tool."""
    key = ours.generate_key("SOP Test <sop-test@securemail.example>")
    cert = ours.extract_cert(key)
    return key, cert, fingerprint(cert)


@pytest.fixture(scope="module")
def other(ours):
    key = ours.generate_key("Other <other@securemail.example>")
    return key, ours.extract_cert(key)


@pytest.fixture()
def sqop(peer_pool):
    return peer_pool.get("sqop")


@pytest.fixture()
def them(peer_pool):
    return peer_pool.identity("sqop")


def _run(args: list[str], stdin: bytes, tmp: Path, **files: bytes) -> subprocess.CompletedProcess:
    """Run our tool with ``files`` written into ``tmp`` and their names substituted in ``args``."""
    for name, blob in files.items():
        (tmp / name).write_bytes(blob)
    argv = [str(tmp / a) if a in files else a for a in args]
    return subprocess.run([*ARGV, *argv], input=stdin, capture_output=True, timeout=TIMEOUT,
                          env={**os.environ, **_env()}, cwd=tmp, check=False)


def _failed(p: subprocess.CompletedProcess, code: int) -> None:
    assert p.returncode == code, p.stderr
    assert p.stdout == b""
    assert b"Traceback" not in p.stderr
    assert p.stderr.startswith(b"securemail-sop: [")


# --- encryption ---------------------------------------------------------------------
def test_we_encrypt_to_sqop_cert(ours, sqop, them):
    for armor in (True, False):
        ciphertext = ours.encrypt(DATA, [them.cert], armor=armor)
        assert ciphertext.startswith(b"-----BEGIN PGP MESSAGE-----") == armor
        assert sqop.decrypt(ciphertext, [them.key]).plaintext == DATA


def test_sqop_encrypts_signed_to_us(ours, sqop, them, me):
    key, cert, fpr = me
    ciphertext = sqop.encrypt(DATA, [cert], signers=[them.key])
    out = ours.decrypt(ciphertext, [key], verify_certs=[them.cert])
    assert out.plaintext == DATA
    [line] = out.verifications
    signing_fpr, primary = LINE.match(line).groups()
    assert primary == them.fpr and signing_fpr != primary  # sqop signs with a subkey


def test_decrypt_reports_no_verification_for_other_signers(ours, sqop, them, me, other):
    key, cert, _ = me
    ciphertext = sqop.encrypt(DATA, [cert], signers=[them.key])
    out = ours.decrypt(ciphertext, [key], verify_certs=[other[1]])
    assert out.plaintext == DATA and out.verifications == []  # spec: decrypt does not fail


def test_we_encrypt_signed_and_sqop_verifies(ours, sqop, them, me):
    key, cert, fpr = me
    ciphertext = ours.encrypt(DATA, [them.cert], signers=[key])
    out = sqop.decrypt(ciphertext, [them.key], verify_certs=[cert])
    assert out.plaintext == DATA and fpr in out.verifications[0]


# --- signatures ----------------------------------------------------------------------
def test_we_sign_detached_sqop_verifies(ours, sqop, me):
    key, cert, fpr = me
    [line] = sqop.verify(DATA, ours.sign(DATA, [key]), [cert])
    assert line.split()[1:3] == [fpr, fpr]


def test_sqop_signs_detached_we_verify(ours, sqop, them):
    [line] = ours.verify(DATA, sqop.sign(DATA, [them.key]), [them.cert])
    signing_fpr, primary = LINE.match(line).groups()
    assert primary == them.fpr and signing_fpr != primary


def test_we_inline_sign_sqop_verifies(ours, sqop, me, them):
    key, cert, fpr = me
    signed = ours.inline_sign(DATA, [key, them.key])   # two one-pass signatures, nested
    for c, f in ((cert, fpr), (them.cert, them.fpr)):
        out = sqop.inline_verify(signed, [c])
        assert out.plaintext == DATA and f in out.verifications[0]


def test_sqop_inline_signs_we_verify(ours, sqop, them):
    out = ours.inline_verify(sqop.inline_sign(DATA, [them.key]), [them.cert])
    assert out.plaintext == DATA
    [line] = out.verifications
    assert LINE.match(line).group(2) == them.fpr


# --- exit codes ------------------------------------------------------------------------
def test_decrypt_with_wrong_key_is_29(ours, me, other, tmp_path):
    ciphertext = ours.encrypt(DATA, [me[1]])
    _failed(_run(["decrypt", "k"], ciphertext, tmp_path, k=other[0]), CANNOT_DECRYPT)


def test_verify_with_wrong_cert_is_3(ours, me, other, tmp_path):
    sig = ours.sign(DATA, [me[0]])
    _failed(_run(["verify", "s", "c"], DATA, tmp_path, s=sig, c=other[1]), NO_SIGNATURE)
    signed = ours.inline_sign(DATA, [me[0]])
    _failed(_run(["inline-verify", "c"], signed, tmp_path, c=other[1]), NO_SIGNATURE)


def test_sqop_signature_with_wrong_cert_is_3(ours, sqop, them, other, tmp_path):
    sig = sqop.sign(DATA, [them.key])
    _failed(_run(["verify", "s", "c"], DATA, tmp_path, s=sig, c=other[1]), NO_SIGNATURE)


@pytest.mark.parametrize("args", [["decrypt", "k"], ["verify", "g", "c"], ["inline-verify", "c"],
                                  ["dearmor"], ["extract-cert"]])
def test_garbage_input_is_bad_data(args, me, tmp_path):
    garbage = b"this is not OpenPGP data\n"
    p = _run(args, garbage, tmp_path, k=me[0], c=me[1], g=garbage)
    _failed(p, BAD_DATA)


def test_garbage_key_and_unsupported_usage(me, tmp_path):
    _failed(_run(["sign", "k"], DATA, tmp_path, k=b"\x99garbage"), BAD_DATA)
    _failed(_run(["sign", "--as=text", "k"], DATA, tmp_path, k=me[0]), UNSUPPORTED_OPTION)
    _failed(_run(["encrypt", "--with-password=p", "c"], DATA, tmp_path, c=me[1], p=b"pw"),
            UNSUPPORTED_OPTION)
    _failed(_run(["frobnicate"], b"", tmp_path), UNSUPPORTED_SUBCOMMAND)
    _failed(_run(["verify", "missing-sig", "c"], DATA, tmp_path, c=me[1]), MISSING_INPUT)


def test_peer_failure_carries_code(ours, me, other):
    """The harness sees our codes too (what other SOP test suites rely on)."""
    with pytest.raises(PeerFailure) as err:
        ours.decrypt(ours.encrypt(DATA, [me[1]]), [other[0]])
    assert err.value.returncode == CANNOT_DECRYPT


# --- signing.py in process: the packet shapes inline_verify accepts and refuses ------------
@pytest.fixture(scope="module")
def signer():
    key = keys.Key(openpgp.generate("Shapes <shapes@securemail.example>", "ed25519", None, None))
    with key.pgp.unlocked(None):
        yield key


def test_inline_shapes(signer):
    lookup = signing.cert_lookup([signer.public()])
    ops, lit, sig = P.read_packets(signing.inline_sign(DATA, [signer], armor=False))
    assert ops.body[:4] == bytes([3, 0x00, 10, 22])  # v3, binary, SHA-512, EdDSA
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = P.write_packet(P.COMPRESSED, b"\x01" + deflated.compress(
        ops.raw + lit.raw + sig.raw) + deflated.flush())
    for ok in (ops.raw + lit.raw + sig.raw, sig.raw + lit.raw, compressed):
        data, [v] = signing.inline_verify(ok, lookup)
        assert data == DATA and v.valid and v.mode == "binary"
        assert v.signing_fpr == signer.fingerprint
    for bad in (ops.raw + lit.raw, lit.raw + sig.raw + sig.raw, sig.raw, lit.raw + ops.raw):
        with pytest.raises(MalformedMessage):
            signing.inline_verify(bad, lookup)
    data, [v] = signing.inline_verify(ops.raw + lit.raw + sig.raw, signing.cert_lookup([]))
    assert v.result.status == "unknown-key" and v.signing_fpr is None
