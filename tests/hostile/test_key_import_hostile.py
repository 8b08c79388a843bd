"""Hostile keys offered to ``securemail keys import``: a clear refusal, exit 1, quickly.

Keys are built packet by packet from a real generated certificate (user IDs
added, signatures repeated, junk), written to a file and imported with the
real CLI into a fresh home. Shapes the importer does not refuse yet are marked
xfail (strict) with the reason, so that fixing them turns the test red until
the mark is removed.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from securemail.crypto import armor as A
from securemail.crypto import openpgp
from securemail.crypto import packets as P
from tests.conftest import run_cli

FAST = 5.0  # seconds: a refusal must not cost more than this


@pytest.fixture(scope="module")
def cert() -> list[P.Packet]:
    """A real Ed25519 certificate: public key, user ID, self-signature, subkey, binding."""
    key = openpgp.generate("Mallory <mallory@justice.gouv.fr>", "ed25519", None, None)
    packets = P.read_packets(key.public().binary())
    assert [p.tag for p in packets] == [P.PUBKEY, P.UID, P.SIG, P.PUBSUBKEY, P.SIG]
    return packets


def raw(*packets: P.Packet | bytes) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.raw for p in packets)


def ten_thousand_uids(c) -> bytes:
    uids = b"".join(P.write_packet(P.UID, f"User {i} <u{i}@justice.gouv.fr>".encode()) for i in range(10_000))
    return A.armor(raw(c[0], c[1], c[2], uids, c[3], c[4]), "PGP PUBLIC KEY BLOCK")


def big_uid(c) -> bytes:
    """The certificate with its user ID replaced by a 100 KB one (refused for its size first)."""
    return raw(c[0], P.write_packet(P.UID, b"M" * 100_000 + b" <mallory@justice.gouv.fr>"), c[2], c[3], c[4])


def junk(n: int) -> bytes:
    """The same n random-looking bytes every run (the first is not a packet header)."""
    return b"\x00" + random.Random(4).randbytes(n - 1)


def bad_crc(armored: bytes) -> bytes:
    crc = re.search(rb"\n=([A-Za-z0-9+/]{4})\n", armored)
    return armored.replace(crc.group(0), b"\n=AAAA\n" if crc.group(1) != b"AAAA" else b"\n=BBBB\n")


def many_signatures(c) -> bytes:
    """~400 KB: one user ID carrying its self-signature 3,000 times (each one is verified)."""
    return raw(c[0], c[1], c[2].raw * 3000, c[3], c[4])


REFUSED = {  # name -> (build, words of the refusal)
    "10,000 user IDs": (ten_thousand_uids, "user IDs (limit 100)"),
    "100 KB of random bytes": (lambda c: junk(100 * 1024), "not OpenPGP key data"),
    "100 KB of random bytes, armored": (lambda c: A.armor(junk(100 * 1024), "PGP PUBLIC KEY BLOCK"),
                                        "not OpenPGP key data"),
    "2 MiB of key data": (lambda c: raw(c[0], c[1], c[2]) * (2 * 1024 * 1024 // len(raw(c[0], c[1], c[2]))),
                          "key data too large"),
    "armor with a bad CRC": (lambda c: bad_crc(A.armor(raw(*c), "PGP PUBLIC KEY BLOCK")), "checksum does not match"),
    "armor without END": (lambda c: A.armor(raw(*c), "PGP PUBLIC KEY BLOCK").split(b"-----END")[0],
                          "no OpenPGP key found"),
    "a 100 KB user ID": (big_uid, "user ID longer than 2048 bytes"),
    "3,000 copies of a self-signature": (many_signatures, "self-signatures (limit 256)"),
}
NOT_YET: dict[str, str] = {}  # shapes the importer still accepts (none today)


SLOW = {"3,000 copies of a self-signature"}


def _param(name: str):
    marks = [pytest.mark.xfail(reason=NOT_YET[name], strict=True)] if name in NOT_YET else []
    return pytest.param(name, marks=marks + ([pytest.mark.slow] if name in SLOW else []))


@pytest.mark.parametrize("name", [_param(n) for n in REFUSED])
def test_hostile_key_is_refused_quickly(tmp_path, cert, record, name):
    build, words = REFUSED[name]
    data = build(cert)
    path = tmp_path / "hostile.asc"
    path.write_bytes(data)
    started = time.monotonic()
    res = run_cli(tmp_path / "home", "keys", "import", str(path))
    took = time.monotonic() - started
    out = res.stdout + res.stderr
    line = next((ln for ln in res.stderr.splitlines() if ln), f"exit {res.exit_code}: {res.stdout[:120]}")
    record(f"keys import: {name} ({len(data) // 1024} KB)", line.replace(str(path), "FILE")[:200],
           exit=res.exit_code, seconds=round(took, 2))
    assert "Traceback" not in out
    assert res.exit_code == 1, out[:500]
    assert line.startswith("refused ") and words in line, line
    assert took < FAST, f"{took:.1f} s"
    listing = run_cli(tmp_path / "home", "keys", "list", "--json")
    assert listing.exit_code == 0 and listing.stdout.strip() == "[]", "a refused key was stored"


def test_the_real_certificate_is_imported(tmp_path, cert, record):
    """The control: the same certificate, untouched, is imported (exit 0)."""
    path = tmp_path / "good.asc"
    path.write_bytes(A.armor(raw(*cert), "PGP PUBLIC KEY BLOCK"))
    res = run_cli(tmp_path / "home", "keys", "import", str(path))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("new ")
