"""A message over 64 KiB reaches the bridge's view in a bytearray handed over (read.Given) and is
read over its own memory where it is canonical PGP/MIME; every other shape, and every refusal,
must show exactly what the same message read from bytes shows: plain (CRLF and bare LF), inline
PGP, PGP/MIME with bare LF, encrypted to someone else, armor that is not base64."""

from __future__ import annotations

import base64
import os

import pytest

from securemail.bridge.loader import shown_with_structure
from securemail.bridge.view import Viewer
from securemail.crypto import keys, message, openpgp
from securemail.mail.read import Given

from ..support.corpus import pgp_mime

ANA = keys.Key(openpgp.generate("Ana <ana@example.org>", "ed25519", None, None))
OTHER = keys.Key(openpgp.generate("Other <other@example.org>", "ed25519", None, None))
BODY = base64.encodebytes(os.urandom(150_000)).replace(b"\n", b"\r\n")


def _to(key: keys.Key, data: bytes) -> bytes:
    return message.encrypt(data, [(key.public(), "x@example.org")], signer=ANA)


SHAPES = {
    "plain": lambda: b"From: a@b.fr\r\nSubject: x\r\n\r\n" + BODY,
    "plain, bare LF": lambda: b"From: a@b.fr\nSubject: x\n\n" + BODY.replace(b"\r\n", b"\n"),
    "inline PGP": lambda: (b"From: a@b.fr\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\n"
                           + _to(ANA, BODY).replace(b"\n", b"\r\n")),
    "PGP/MIME": lambda: pgp_mime("bruno", _to(ANA, b"Subject: in\r\n\r\n" + BODY)),
    "PGP/MIME, bare LF": lambda: pgp_mime("bruno", _to(ANA, b"Subject: in\r\n\r\n" + BODY)).replace(b"\r\n", b"\n"),
    "to someone else": lambda: pgp_mime("bruno", _to(OTHER, b"Subject: in\r\n\r\n" + BODY)),
    "armor not base64": lambda: pgp_mime("bruno", b"-----BEGIN PGP MESSAGE-----\n\n" + BODY.replace(b"\r\n", b"\n")
                                         + b"*\n-----END PGP MESSAGE-----\n"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_big_message_shows_the_same_over_its_own_memory_as_from_bytes(shape):
    raw = SHAPES[shape]()
    assert len(raw) > 64 << 10
    viewer = Viewer([ANA], lambda kid, fpr: ANA.public())
    from_bytes = shown_with_structure(viewer.show, raw)
    over = shown_with_structure(viewer.show, Given(bytearray(raw)))
    assert bytes(over[0]) == bytes(from_bytes[0]) and over[1] == from_bytes[1]
    assert b"Securemail-Status: " in over[0]
