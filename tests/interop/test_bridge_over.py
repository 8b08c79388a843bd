"""A big message from each peer, read by the bridge's reader over its own memory (read.Given
of a bytearray: decoded over the armor, decrypted where it lies, shown from there), shows as the
same message read from bytes: the peers' packets differ (partial body lengths, compression,
their own literal and signature packets). And a big message modified in transit shows as a
notice, with no byte of its plaintext, read over itself as from bytes."""

from __future__ import annotations

import base64
import os

from securemail.bridge.loader import shown_with_structure
from securemail.bridge.view import Viewer
from securemail.crypto import keys
from securemail.mail.read import Given

from ..support.corpus import pgp_mime

MiB = 1 << 20


def _ours(secret: bytes) -> keys.Key:
    return next(k for k in keys.load_keys(secret) if isinstance(k, keys.Key))


def test_a_big_message_from_each_peer_shows_the_same_read_over_itself(peer, peer_pool):
    me = peer_pool.identity(peer.name)
    key = _ours(me.key)
    entity = (b"From: " + me.uid.split("<")[1].rstrip(">").encode() + b"\r\nSubject: big\r\n"
              b"Content-Type: application/octet-stream\r\n\r\n"
              + base64.encodebytes(os.urandom(2 * MiB)).replace(b"\n", b"\r\n"))
    raw = pgp_mime("bruno", peer.encrypt(entity, [me.cert], [me.key]))
    viewer = Viewer([key], lambda kid, fpr: key.public())
    from_bytes = shown_with_structure(viewer.show, raw)
    over = shown_with_structure(viewer.show, Given(bytearray(raw)))
    assert bytes(over[0]) == bytes(from_bytes[0]) and over[1] == from_bytes[1]
    assert bytes(over[0]).endswith(entity) and b"Securemail-Status: encrypted=yes; signature=" in over[0]


def test_a_big_message_modified_in_transit_shows_a_notice_read_over_itself(peer_pool):
    me = peer_pool.identity("gpg")
    key = _ours(me.key)
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    entity = (b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + (marker + b"\r\n") * (3 * MiB // 40))
    armored = peer_pool.get("gpg").encrypt(entity, [me.cert], [me.key], armor=False)
    bent = bytearray(armored)
    bent[len(bent) // 2] ^= 0x01   # one bit of the ciphertext, mid-message
    from securemail.crypto import armor as A
    raw = pgp_mime("bruno", A.armor(bytes(bent)))
    viewer = Viewer([key], lambda kid, fpr: key.public())
    for given in (raw, Given(bytearray(raw))):
        shown = bytes(shown_with_structure(viewer.show, given)[0])
        assert b"message not shown" in shown and marker not in shown, shown[:400]
