"""The gateway's header surgery: transport headers out, protected inner entity built on bytes."""

from __future__ import annotations

import tracemalloc
from email import message_from_bytes, policy

from securemail.transform.routes import protected_inner, strip_headers, top_headers
from securemail.mail.compose import _header, pgp_mime

MULTIPART = (b"Received: from pc.office.lan (10.0.0.9)\r\n\tby mta.office.lan\r\n"
             b"From: Alice <alice@interieur.gouv.fr>\r\nTo: bruno@justice.gouv.fr\r\n"
             b"Subject: =?utf-8?q?R=C3=A9union?=\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n"
             b"Return-Path: <alice@interieur.gouv.fr>\r\n\r\n"
             b"--b1\r\nContent-Type: text/plain\r\n\r\nline 1\r\n.dot line\r\n--b1\r\n"
             b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\x02\r\n--b1--\r\n")


def test_inner_entity_keeps_the_body_byte_for_byte_and_gets_hp_cipher():
    inner = protected_inner(MULTIPART)
    head, body = inner.split(b"\r\n\r\n", 1)
    assert body == MULTIPART.split(b"\r\n\r\n", 1)[1]
    assert b"Received" not in head and b"Return-Path" not in head and b"MIME-Version" not in head
    msg = message_from_bytes(inner, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed" and msg.get_param("hp") == "cipher"
    assert msg.get_boundary() == "b1" and str(msg["Subject"]) == "Réunion"


def test_inner_entity_without_content_type_is_plain_text():
    inner = protected_inner(b"From: a@x.fr\r\nSubject: s\r\n\r\nhello\r\n")
    msg = message_from_bytes(inner, policy=policy.default)
    assert msg.get_content_type() == "text/plain" and msg.get_param("hp") == "cipher"
    assert msg.get_content() == "hello\r\n"  # the body is kept as it came (CRLF)


def test_strip_headers_removes_continuation_lines_and_keeps_the_rest():
    out = strip_headers(MULTIPART)
    assert b"by mta.office.lan" not in out and out.startswith(b"From: Alice")


def test_top_headers_unfolds_and_takes_the_first():
    raw = b"From: a@x.fr\r\nTo: b@y.fr,\r\n c@z.fr\r\nTo: evil@e.fr\r\n\r\nbody\r\n"
    assert top_headers(raw) == {"From": "a@x.fr", "To": "b@y.fr, c@z.fr"}


def test_long_ascii_headers_are_folded_and_non_ascii_encoded():
    folded = _header("To", ", ".join(f"user{i}@justice.gouv.fr" for i in range(10)))
    assert all(len(line) <= 78 for line in folded.split("\r\n")) and "\r\n " in folded
    assert _header("From", "Émile <emile@x.fr>").startswith("From: =?utf-8?")


def test_headers_only_message_gets_an_empty_body():
    assert strip_headers(b"From: a@x.fr\r\nReceived: by mta") == b"From: a@x.fr\r\n\r\n"
    assert protected_inner(b"From: a@x.fr").endswith(b'hp="cipher"\r\n\r\n')


def test_pgp_mime_puts_the_armor_in_crlf_lines_as_it_is():
    armored = (b"-----BEGIN PGP MESSAGE-----\n\nwcFMA" + b"x" * 59
               + b"\nabc\n=crc\n-----END PGP MESSAGE-----\n\n")
    for given in (armored, armored.replace(b"\n", b"\r\n")):
        out = pgp_mime({"From": "a@x.fr", "To": "b@y.fr"}, given)
        assert out.count(b"\n") == out.count(b"\r\n")
        msg = message_from_bytes(out, policy=policy.default)
        boundary = msg.get_boundary().encode()
        assert out.endswith(b"\r\n--" + boundary + b"--\r\n")
        part = msg.get_payload()[1].get_payload().encode()
        assert part.replace(b"\r\n", b"\n") == armored.rstrip(b"\n")


def test_a_big_body_or_armor_is_copied_once():
    raw = MULTIPART.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + b"x" * 76 * (8 << 10) * 13  # 8 MB
    armored = b"-----BEGIN PGP MESSAGE-----\n\n" + b"y" * 64 * (128 << 10) + b"\n-----END PGP MESSAGE-----\n"
    lines = armored.replace(b"y" * 64, b"y" * 63 + b"\n")  # the usual shape, and one 8 MB line
    for make, size in ((lambda: protected_inner(raw), len(raw)), (lambda: strip_headers(raw), len(raw)),
                       (lambda: pgp_mime({"From": "a@x.fr"}, armored), len(armored)),
                       (lambda: pgp_mime({"From": "a@x.fr"}, lines), len(lines))):
        tracemalloc.start()
        make()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1.3 * size
