"""What crosses to a member: the packets in the gateway's own wrapper, the list's headers, nothing else.

Each trick of issue 10 finding 1 is built around a real OpenPGP message and
given to the real check (policy/encryption.py) and the real outbound transform;
what comes out is judged by the suite's independent checker
(tests/differential/checker.py), which must also reject what crossed before.
"""

from __future__ import annotations

import pytest

from securemail.crypto import keys, openpgp
from securemail.crypto import message as M
from securemail.transform.routes import Transformer, fields_of, strip_headers
from securemail.mail.crossing import CLEAR_HEADERS, seal_reasons
from securemail.mail.headers import parse_header_block
from securemail.policy.encryption import check
from securemail.policy.facts import Facts, Headers
from tests.differential.checker import problems

ALICE, BRUNO = "alice@interieur.gouv.fr", "bruno@justice.gouv.fr"
HEAD = (f"From: Alice <{ALICE}>\r\nTo: <{BRUNO}>\r\nSubject: ...\r\n"
        "Date: Mon, 1 Jan 2024 10:00:00 +0100\r\nMessage-ID: <1.2@interieur.gouv.fr>\r\n"
        "Received: from pc by mta.office.lan\r\nMIME-Version: 1.0\r\n")
CT = 'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b1"\r\n'


@pytest.fixture(scope="module")
def world():
    signer = keys.Key(openpgp.generate(f"Gateway <postmaster@interieur.gouv.fr>", "ed25519", None, None))
    bruno = keys.Key(openpgp.generate(f"Bruno <{BRUNO}>", "ed25519", None, None))
    armored = M.encrypt(b"Subject: vrai\r\n\r\nTexte chiffre.\r\n", [(bruno, BRUNO)]).replace(b"\n", b"\r\n")
    t = Transformer(hostname="gw.interieur.gouv.fr", domain_keys={"interieur.gouv.fr": signer},
                    user_key=lambda r: bruno, member_key=lambda d: None, lookup=lambda k, f: None,
                    dkim_sign=lambda body, d: body)
    return {"t": t, "bruno": bruno, "armored": armored}


def pgp_mime(armored: bytes, *, preamble=b"", control=b"Version: 1\r\n", before=b"", after=b"",
             epilogue=b"", head: str = HEAD) -> bytes:
    return ((head + CT + "\r\n").encode() + preamble + b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\n"
            + control + b"\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n" + before + armored
            + after + b"\r\n--b1--\r\n" + epilogue)


def inline(armored: bytes, *, before=b"", after=b"", head: str = HEAD) -> bytes:
    return (head + "Content-Type: text/plain\r\n\r\n").encode() + before + armored + after


TRICKS = {  # name -> (build(armored) -> message, where the check says the text was)
    "preamble": (lambda a: pgp_mime(a, preamble=b"SECRET-PREAMBLE\r\n"), "preamble"),
    "control part": (lambda a: pgp_mime(a, control=b"Version: 1\r\nSECRET-CONTROL\r\n"), "control part"),
    "after the armor": (lambda a: pgp_mime(a, after=b"SECRET-AFTER-ARMOR\r\n"), "text around the armor"),
    "epilogue": (lambda a: pgp_mime(a, epilogue=b"SECRET-EPILOGUE\r\n"), "epilogue"),
    "armor headers": (lambda a: pgp_mime(a.replace(b"-----\r\n\r\n", b"-----\r\nComment: SECRET-COMMENT\r\n\r\n", 1)),
                      "armor headers"),
}


def facts(raw: bytes) -> Facts:
    """As the stage gathers them: with the one parse of the header block (the transform reads it)."""
    return Facts(origin="office", listener="relay", tls=False, auth_user=None, mail_from=ALICE,
                 sender_domain="interieur.gouv.fr", sender_class="own", headers=Headers((ALICE,), 0),
                 recipients={BRUNO: "member"}, encryption=check(raw), from_class="own",
                 block=parse_header_block(raw))


def crossed(world, raw: bytes) -> tuple[bytes, dict]:
    f = facts(raw)
    return world["t"].outbound(raw, "justice.gouv.fr", [BRUNO], sender_domain=f.from_domain,
                               encryption=f.encryption, fields=fields_of(raw, f))


def readable(world, body: bytes) -> bytes:
    armor = body[body.index(b"-----BEGIN"):body.index(b"-----END PGP MESSAGE-----") + 25]
    return M.decrypt(armor, [world["bruno"]], lambda k, f: None).data


@pytest.mark.parametrize("name", TRICKS)
def test_a_trick_in_the_wrapper_is_dropped_by_the_rebuild(world, name):
    build, where = TRICKS[name]
    raw = build(world["armored"])
    enc = check(raw)
    assert enc.encrypted and enc.format == "pgp/mime" and where in enc.outside
    body, meta = crossed(world, raw)
    assert b"SECRET" not in body and b"mta.office.lan" not in body
    assert problems(body) == [] and meta["encrypted_by"] == "sender" and where in meta["dropped"]
    assert readable(world, body) == b"Subject: vrai\r\n\r\nTexte chiffre.\r\n"  # the same packets


@pytest.mark.parametrize("name", TRICKS)
def test_the_checker_rejects_what_crossed_before(world, name):
    """Not vacuous: the body the gateway used to pass on (transport headers stripped) is refused."""
    before = strip_headers(TRICKS[name][0](world["armored"]))
    assert b"SECRET" in before and problems(before) != []


def test_a_clean_pgp_mime_message_is_rebuilt_and_the_checker_accepts_it(world):
    raw = pgp_mime(world["armored"])
    body, meta = crossed(world, raw)
    assert problems(body) == [] and meta == {"encrypted_by": "sender", "encrypted_to": [], "dropped": []}
    without_block, _ = world["t"].outbound(raw, "justice.gouv.fr", [BRUNO], sender_domain="interieur.gouv.fr",
                                           encryption=check(raw))  # its header block parsed there
    assert without_block.split(b"boundary=")[0] == body.split(b"boundary=")[0]  # the same fields
    names = [line.split(b":")[0].decode() for line in body.split(b"\r\n\r\n")[0].split(b"\r\n") if line[:1] != b" "]
    assert set(names) <= set(CLEAR_HEADERS) and "Received" not in names
    assert body.split(b"\r\n\r\n", 1)[1].startswith(b"--securemail-")  # no preamble


def test_inline_alone_crosses_inline_and_with_text_around_it_is_encrypted_whole(world):
    a = world["armored"]
    body, meta = crossed(world, inline(a))
    assert check(inline(a)).format == "inline" and meta["encrypted_by"] == "sender" and problems(body) == []
    for raw in (inline(a, after=b"\r\nSECRET-AFTER-END\r\n"), inline(a, before=b"SECRET-BEFORE\r\n"),
                inline(a, after=b"SECRET-BETWEEN\r\n-----END PGP MESSAGE-----\r\n")):
        assert not check(raw).encrypted
        body, meta = crossed(world, raw)
        assert meta["encrypted_by"] == "gateway" and b"SECRET" not in body and problems(body) == []
        assert b"SECRET" in readable(world, body)  # sealed, not lost


@pytest.mark.parametrize("field", ["Subject: SECRET-SUBJECT", "Keywords: SECRET-KEYWORDS",
                                   "Comments: SECRET-COMMENTS", "X-Secret: SECRET-X", "Reply-To: SECRET@x.fr",
                                   "Message-ID: <SECRET nope>", "Date: SECRET-DATE",
                                   "To: <SECRET@justice.gouv.fr>"])
def test_content_in_clear_headers_is_sealed_with_the_message(world, field):
    name = field.split(":")[0]
    head = HEAD.replace("Subject: ...\r\n", "") if name == "Subject" else HEAD
    if name in ("Message-ID", "Date"):
        head = "".join(line + "\r\n" for line in HEAD.split("\r\n")[:-1] if not line.startswith(name))
    raw = pgp_mime(world["armored"], head=head + field + "\r\n")
    assert seal_reasons([(n.lower(), n.encode() + b": x") for n in ("From", "To")]) == ()
    body, meta = crossed(world, raw)
    assert meta["encrypted_by"] == "gateway" and meta["sealed"]
    assert b"SECRET" not in body and problems(body) == []
    assert b"SECRET" in readable(world, body)


@pytest.mark.parametrize("raw", [
    pytest.param(lambda a: pgp_mime(a, before=b"SECRET-BEFORE\r\n"), id="text before the armor"),
    pytest.param(lambda a: pgp_mime(a).replace(b"\r\n--b1--", b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSECRET\r\n--b1--"),
                 id="a third part"),
    pytest.param(lambda a: (HEAD + 'Content-Type: multipart/mixed; boundary="o"\r\n\r\n--o\r\n').encode()
                 + pgp_mime(a, head="").replace(b"--b1--\r\n", b"--b1--\r\n--o\r\nContent-Type: text/plain\r\n\r\nSECRET\r\n--o--\r\n"),
                 id="PGP/MIME nested in a mixed message"),
    pytest.param(lambda a: pgp_mime(b'Content-Type: multipart/mixed; boundary="n"\r\n\r\n--n\r\n\r\n' + a
                                    + b"\r\n--n\r\n\r\nSECRET\r\n--n--").replace(
                 b"Content-Type: application/octet-stream\r\n\r\n", b""), id="a multipart second part"),
])
def test_nested_and_extra_parts_are_not_encrypted_and_are_sealed(world, raw):
    raw = raw(world["armored"])
    assert not check(raw).encrypted
    body, meta = crossed(world, raw)
    assert meta["encrypted_by"] == "gateway" and b"SECRET" not in body and problems(body) == []


def test_the_differential_plugin_judges_what_the_gateways_deliver_to_members(world, tmp_path):
    """The plugin is on in this session, judges smtp: hops only, and is installed in child processes."""
    import asyncio
    import os
    import subprocess
    import sys

    from securemail.app import gateway as service
    from tests.differential import Ledger, observe
    assert service.build_delivery.__qualname__.startswith("pytest_configure.")  # wrapped for the session
    sent = []

    async def deliver(hop, mail_from, rcpt, body, **kw):
        sent.append(body)
    ledger = Ledger(tmp_path)
    good, _ = crossed(world, pgp_mime(world["armored"]))
    bad = strip_headers(TRICKS["epilogue"][0](world["armored"]))
    for hop, body in (("smtp:127.0.0.1:25:" + "0" * 64, good), ("smtp:127.0.0.1:25:" + "0" * 64, bad),
                      ("relay:127.0.0.1:25", bad)):
        asyncio.run(observe(deliver, ledger)(hop, "a@x.fr", "b@y.fr", body, helo="x"))
    verdicts = ledger.collect()
    assert len(sent) == 3 and [bool(v["problems"]) for v in verdicts] == [False, True]
    probe = "import securemail.delivery.pool as p; print(p.SessionPool.deliver.__qualname__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "_patch.<locals>.deliver"  # a gateway's child process is watched too
