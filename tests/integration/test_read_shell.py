"""The bridge's reading path (``read_message(content=False)``, mail/shell.py) says what the general
path says, for every message of the interop corpus and for shells bent every way a sender can bend
them; only the text and attachments of a MIME entity are not extracted. Canonical PGP/MIME takes the fast path."""

from __future__ import annotations

import base64
import re
from email import policy

import pytest

from securemail.mail import shell
from securemail.mail.read import read_message
from tests.support.reader import corpus_reader

SAME = ("encrypted", "decrypted", "signature", "signer", "sender", "subject", "error", "format", "warning",
        "signature_reason", "_content", "_inner_from", "_outer_from")


@pytest.fixture(scope="module")
def reader(corpus, tmp_path_factory):
    with corpus_reader(corpus, tmp_path_factory.mktemp("reader")) as (core, keys):
        yield lambda raw, content: read_message(raw, keys, core.keys.lookup, content=content)


def assert_same(reader, raw: bytes) -> None:
    full, fast = reader(raw, True), reader(raw, False)
    assert {n: getattr(fast, n) for n in SAME} == {n: getattr(full, n) for n in SAME}
    assert fast.attachments == [] and fast.body in ("", full.body)  # a MIME entity's text is not extracted


def canonical(corpus) -> list[bytes]:
    out = []
    for m in corpus["mail"]:
        raw = (corpus["dir"] / m["file"]).read_bytes()
        if b"multipart/encrypted" in raw:
            out.append(raw if b"\r\n" in raw else raw.replace(b"\n", b"\r\n"))
    return out


def test_every_corpus_message_reads_the_same(corpus, reader):
    for m in corpus["mail"]:
        assert_same(reader, (corpus["dir"] / m["file"]).read_bytes())


def test_canonical_pgp_mime_takes_the_fast_path(corpus, reader):
    good = [raw for raw in canonical(corpus) if reader(raw, True).decrypted]
    assert len(good) >= 3
    for raw in good:
        found = shell.encrypted_payload(raw, policy.default)
        assert found is not None and b"-----BEGIN PGP MESSAGE-----" in bytes(found[1]) and found[1].data is raw
        assert_same(reader, raw)


def bends(raw: bytes) -> dict[str, bytes]:
    """The same message with its shell bent: each either read by the fast path or left to the general one."""
    boundary = re.search(rb'boundary="?([^";\r\n]+)', raw).group(1)
    d = b"--" + boundary
    head, _, body = raw.partition(b"\r\n\r\n")
    first, second = body.split(d + b"\r\n")[1:3]
    part_head, _, payload = second.partition(b"\r\n\r\n")
    part_head = re.sub(rb"(?im)^content-transfer-encoding:[^\r\n]*(\r\n|$)", b"", part_head).rstrip(b"\r\n")
    payload = payload.split(b"\r\n" + d + b"--")[0]
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return {
        "lf line ends": raw.replace(b"\r\n", b"\n"),
        "preamble and epilogue": head + b"\r\n\r\npreamble\r\n" + body + b"epilogue\r\n",
        "base64 payload": head + b"\r\n\r\n" + d + b"\r\n" + first + d + b"\r\n"
                          + part_head + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64 + d + b"--\r\n",
        "quoted-printable payload": head + b"\r\n\r\n" + d + b"\r\n" + first + d + b"\r\n"
                                    + part_head + b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                                    + payload + b"\r\n" + d + b"--\r\n",
        "a third part": raw.replace(d + b"--", d + b"\r\nContent-Type: text/plain\r\n\r\nhi\r\n" + d + b"--"),
        "no close delimiter": raw.replace(d + b"--", b""),
        "parts swapped": head + b"\r\n\r\n" + d + b"\r\n" + second.split(b"\r\n" + d + b"--")[0] + b"\r\n"
                         + d + b"\r\n" + first + d + b"--\r\n",
        "delimiter with a tail": raw.replace(d + b"\r\n", d + b"x\r\n", 1),
        "one part": head + b"\r\n\r\n" + d + b"\r\n" + first + d + b"--\r\n",
    }


def test_bent_shells_read_as_the_general_path_reads_them(corpus, reader):
    raw = next(r for r in canonical(corpus) if reader(r, True).decrypted)
    taken = {}
    for name, bent in bends(raw).items():
        assert_same(reader, bent)
        taken[name] = shell.encrypted_payload(bent, policy.default) is not None
    assert taken["preamble and epilogue"] and taken["base64 payload"], taken
    assert not any(taken[n] for n in ("lf line ends", "quoted-printable payload", "a third part",
                                      "no close delimiter", "parts swapped", "delimiter with a tail", "one part")), taken
    assert reader(bends(raw)["base64 payload"], False).decrypted
