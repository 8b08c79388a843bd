"""The received header block is parsed once per message, and only by ``parse_header_block`` (issue 11).

The crypto stage of a real gateway home (``app.open_child(home, "crypto").stage``, as a
crypto worker builds it) decides three messages while every header-splitting
primitive of the code base is counted: ``mail.headers.parse_header_block``, the
email package's parsers (``BytesParser``/``BytesHeaderParser``/``Parser``), the
transform's own splitters (``split_message``, ``header_fields``, ``_kept_head``),
the encryption check's ``_top``, dkimpy's ``rfc822_parse``, the DKIM signer's
``split_message`` and the status headers' ``_head``. A call is a parse of the
received header block when its argument begins with that block.

- office mail to a member: judged, encrypted by the gateway and DKIM-signed;
- that member gateway's output, received by the member (maildir): TLS client
  certificate, DKIM verified, decrypted with the domain key and re-encrypted to
  the user;
- office mail to a colleague on the same domain (local, maildir).

Bodies the gateway builds are other messages, parsed where they are used: the
DKIM signer splits the ``pgp_mime`` output it signs, and the status headers read
the header block of a message once it is decrypted. Those parses are of bytes the
gateway wrote (or decrypted), never of the received header block, and are not
counted against it. The encryption check's MIME parse of the body is fed the
block's Content-Type and Content-Transfer-Encoding fields, not the received bytes.
"""

from __future__ import annotations

import email.parser
import time
from collections import Counter

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from securemail.envelope import Envelope
from securemail.app import open_child
from securemail.mail import headers as H
from tests.support import OFFICE, federation, person

pytestmark = pytest.mark.timeout(300)

ONE_PARSE = "securemail.transform.stage.parse_header_block"  # CryptoStage.decide's, within the limits
HERE, THERE = "interieur.gouv.fr", "justice.gouv.fr"
ALICE, ALBERT, BRUNO = f"alice@{HERE}", f"albert@{HERE}", f"bruno@{THERE}"


def office_mail(to: str, n: int) -> bytes:
    return (f"Received: from pc.office.lan (10.0.0.9)\r\n\tby mta.office.lan\r\n"
            f"From: Alice <{ALICE}>\r\nTo: <{to}>\r\nSubject: Note {n}\r\n"
            f"Date: Thu, 03 Dec 2026 06:00:00 +0000\r\nMessage-ID: <n{n}@{HERE}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Lorem ipsum dolor sit amet\r\n" * 40).encode()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parses")
    _, homes = federation(tmp, domains=(HERE, THERE), trusted=f"{OFFICE}/32")
    person(tmp, BRUNO, homes[THERE])
    person(tmp, ALBERT, homes[HERE])
    here, there = open_child(homes[HERE].home, "crypto"), open_child(homes[THERE].home, "crypto")
    yield homes, here.stage, there.stage
    here.engine.dispose()
    there.engine.dispose()


def _primitives() -> dict[str, tuple[object, str]]:
    """name -> (owner, attribute) of every function that splits a header block out of bytes."""
    import dkim

    from securemail.crypto import dkim_signing
    from securemail.transform import routes, stage, status
    from securemail.policy import encryption, facts
    out = {f"{m.__name__}.parse_header_block": (m, "parse_header_block")
           for m in (H, stage, facts) if getattr(m, "parse_header_block", None) is H.parse_header_block}
    out.update({
        "email BytesParser.parsebytes": (email.parser.BytesParser, "parsebytes"),
        "email Parser.parsestr": (email.parser.Parser, "parsestr"),
        "routes.split_message": (routes, "split_message"),
        "routes.header_fields": (routes, "header_fields"),
        "routes._kept_head": (routes, "_kept_head"),
        "encryption._top": (encryption, "_top"),
        "dkim.rfc822_parse": (dkim, "rfc822_parse"),
        "dkim_signing.split_message": (dkim_signing, "split_message"),
        "status._head": (status, "_head"),
    })
    return out


class Counted:
    """Counts the calls of every primitive, by whether they read the received header block."""

    def __init__(self, monkeypatch) -> None:
        self.received, self.head_size = b"", 0
        self.of_received: Counter[str] = Counter()
        self.of_others: Counter[str] = Counter()
        for name, (owner, attr) in _primitives().items():
            monkeypatch.setattr(owner, attr, self._wrap(name, getattr(owner, attr)))

    def _wrap(self, name: str, fn):
        def counted(*args, **kw):
            data = next((a for a in args if isinstance(a, (bytes, bytearray, memoryview, str))), None)
            if data is not None:
                data = data.encode("ascii", "surrogateescape") if isinstance(data, str) else bytes(data)
                head = self.received[:self.head_size]
                (self.of_received if data[:len(head)] == head else self.of_others)[name] += 1
            return fn(*args, **kw)
        return counted

    def decide(self, stage, env: Envelope, listener: str):
        """The stage's decision on ``env``, its received header block parsed once and only by the stage."""
        self.received, self.head_size = env.data, env.data.find(b"\r\n\r\n") + 2
        self.of_received.clear()
        self.of_others.clear()
        decision = stage.decide(env, listener)
        assert self.of_received == {ONE_PARSE: 1}, (dict(self.of_received), dict(self.of_others))
        return decision


def envelope(sender: str, rcpt: str, data: bytes, peer: str, cert: bytes | None = None) -> Envelope:
    return Envelope(sender, (rcpt,), data, peer, 2525, cert is not None, cert, None, "test", time.time())


def test_the_received_header_block_is_parsed_once_per_message(gateways, monkeypatch):
    homes, here, there = gateways
    counted = Counted(monkeypatch)

    # office mail to a member: judged, encrypted here, DKIM-signed
    d = counted.decide(here, envelope(ALICE, BRUNO, office_mail(BRUNO, 1), OFFICE), "relay")
    assert d.verdict is None and [it.meta["encrypted_by"] for it in d.items] == ["gateway"], d
    assert counted.of_others["dkim_signing.split_message"] == 1  # the body built here, DKIM-signed
    crossed = d.items[0].body

    # that body received by the member gateway, from ours (client certificate), to a user (maildir)
    cert = x509.load_pem_x509_certificate(homes[HERE].cert.read_bytes()).public_bytes(Encoding.DER)
    d = counted.decide(there, envelope(ALICE, BRUNO, crossed, "127.0.0.1", cert), "relay")
    assert d.verdict is None and [it.meta.get("decrypted") for it in d.items] == [True], d
    assert counted.of_others["status._head"] >= 1  # the decrypted message's own header block

    # office mail to a colleague served here (maildir): encrypted to the colleague's key
    d = counted.decide(here, envelope(ALICE, ALBERT, office_mail(ALBERT, 2), OFFICE), "relay")
    assert d.verdict is None and [it.meta.get("encrypted_by") for it in d.items] == ["gateway"], d
