"""Threat agent: a malicious authenticated user of a member office (submission AUTH, key publication).

Every test drives the real gateways of the conftest as this agent would and
asserts a promise of docs/security-target.md.
"""

from __future__ import annotations

import pytest

from tests.hostile import ALICE, BRUNO, GATEWAY_PEER, JUSTICE, OFFICE, OWN, STRANGER  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# --- issue 10, finding 3: a user publishes a key for other addresses ----------------------------
import json as _json_f3  # noqa: E402 - appended block (finding 3)

CULTURE = "culture.gouv.fr"
MINISTER, CEO = f"minister@{OWN}", f"ceo@{CULTURE}"


@pytest.fixture(scope="module")
def publishing(tmp_path_factory):
    """interieur.gouv.fr (A) and culture.gouv.fr, real gateways with real key directories; alice
    has a submission account at A, whose publish endpoint she talks to with `keys publish`."""
    from tests.support import Running, ok, run_cli
    from tests.integration.test_key_directory import Fed, directory_federation
    tmp = tmp_path_factory.mktemp("rogue-publisher")
    homes, wkd, fpr = directory_federation(tmp, domains=(OWN, CULTURE))
    fed = Fed(tmp, homes, wkd, fpr)
    ok(run_cli(homes[OWN].home, "gateway", "user", "add", ALICE, "--password-file", str(fed.pw)))
    with Running(homes[OWN], homes[CULTURE], cpu_workers=0):
        yield fed


def _f3_home_with(fed, name: str, key):
    """A person's home holding ``key`` (secret) and the federation manifest."""
    from tests.support import install_manifest, ok, run_cli
    home = fed.tmp / name
    ok(run_cli(home, "keys", "import", "-", input=key.armored()), "import")
    install_manifest(home, fed.tmp, fed.fpr)
    return home


def _f3_served(fed, address: str) -> bytes | None:
    from securemail.keys.wkd import advanced_path
    status, body = fed.get(OWN, advanced_path(address))
    return body if status == 200 else None


def _f3_encrypted_to(home, rcpt: str, subject: str) -> list[str]:
    from tests.support import office_send, ok, run_cli
    msg = (f"From: Agent <agent@{OWN}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@{OWN}>\r\n\r\nTexte.\r\n").encode()
    mid = office_send(home.relay, f"agent@{OWN}", [rcpt], msg)
    return _json_f3.loads(ok(run_cli(home.home, "queue", "show", mid)).stdout)["meta"].get("encrypted_to", [])


def test_publication_of_a_key_for_other_addresses_is_refused(publishing):
    """alice@interieur publishes, properly signed and authenticated, a key that also carries
    minister@interieur and ceo@culture: refused with the reason printed, nothing stored or
    served; later mail for minister@ and ceo@ is never encrypted to alice's key."""
    from tests.support import ok, run_cli
    from tests.unit.test_wkd import new_key, with_uid
    fed, a = publishing, publishing.homes[OWN]
    rogue = with_uid(with_uid(new_key(f"Alice <{ALICE}>"), f"Le Ministre <{MINISTER}>"), f"Ceo <{CEO}>")
    res = fed.publish(_f3_home_with(fed, "alice-rogue", rogue), ALICE)
    assert res.exit_code == 1
    assert (f"refused (400): key has user IDs for other addresses ({CEO}, {MINISTER}); "
            f"publish a key whose only user ID is {ALICE}") in res.stderr
    assert _f3_served(fed, ALICE) is None and _f3_served(fed, MINISTER) is None
    listing = _json_f3.loads(ok(run_cli(a.home, "keys", "list", "--json")).stdout)
    assert rogue.fingerprint not in {k["fingerprint"] for k in listing}
    # the operator imports the minister's real key; mail for the minister goes to it, and mail for
    # ceo@culture (no key of hers in culture's directory) to culture's domain key
    minister = new_key(f"Le Ministre <{MINISTER}>")
    ok(run_cli(a.home, "keys", "import", "-", input=minister.public().armored()), "operator import")
    assert _f3_encrypted_to(a, MINISTER, "f3-minister") == [minister.fingerprint]
    culture = _json_f3.loads(ok(run_cli(fed.homes[CULTURE].home, "keys", "list", "--json")).stdout)
    assert _f3_encrypted_to(a, CEO, "f3-ceo") == [next(k["fingerprint"] for k in culture
                                                       if f"gateway@{CULTURE}" in k["addresses"])]


def test_an_update_of_a_published_key_cannot_add_other_addresses(publishing):
    """alice publishes a clean key, then the same key with minister@ added: the update is refused,
    what is served for alice keeps her user ID alone, and minister@ is never bound to it."""
    from tests.support import ok, run_cli
    from tests.unit.test_wkd import new_key, with_uid
    fed, a = publishing, publishing.homes[OWN]
    clean = new_key(f"Alice <{ALICE}>")
    ok(fed.publish(_f3_home_with(fed, "alice-clean", clean), ALICE), "publish the clean key")
    grown = with_uid(clean, f"Le Ministre <{MINISTER}>")
    res = fed.publish(_f3_home_with(fed, "alice-grown", grown), ALICE)
    assert res.exit_code == 1 and f"other addresses ({MINISTER})" in res.stderr
    served = _f3_served(fed, ALICE)
    assert served is not None and b"Alice" in served and MINISTER.encode() not in served
    assert _f3_served(fed, MINISTER) is None
    res = run_cli(a.home, "keys", "accept", MINISTER, clean.fingerprint)
    assert res.exit_code != 0                                       # no binding, no pin
    assert clean.fingerprint not in _f3_encrypted_to(a, MINISTER, "f3-minister-2")


# --- issue 10, finding 1: plaintext hidden in "encrypted" mail from the office -------------------
import threading as _threading_f1  # noqa: E402 - appended block (finding 1)
import time as _time_f1  # noqa: E402
from contextlib import contextmanager as _contextmanager_f1  # noqa: E402
from email.utils import formatdate as _formatdate_f1  # noqa: E402

_F1_MARK = b"F1-HIDDEN-PLAINTEXT"


@_contextmanager_f1
def _f1_watch_j(gw):
    """Every message justice's gateway J receives while inside, as its intake got it (what crossed)."""
    j = next(g for g in gw.running.gateways if g.config.domains == (JUSTICE,))
    got, lock, orig = [], _threading_f1.Lock(), j.pipeline.accept

    async def accept(env, listener):
        with lock:
            got.append(env.data)
        return await orig(env, listener)
    j.pipeline.accept = accept
    try:
        yield got
    finally:
        j.pipeline.accept = orig


def _f1_head(mid: bytes, extra: bytes = b"") -> bytes:
    return (f"From: Alice Martin <{ALICE}>\r\nTo: <{BRUNO}>\r\nSubject: ...\r\n"
            f"Date: {_formatdate_f1(usegmt=True)}\r\n").encode() + b"Message-ID: " + mid + b"\r\n" + extra


def _f1_pgp_mime(gw, mid: bytes, *, preamble=b"", control=b"Version: 1\r\n", after=b"", epilogue=b"") -> bytes:
    from tests.hostile.test_message_hostile import armored_of
    return (_f1_head(mid) + b'MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; '
            b'protocol="application/pgp-encrypted"; boundary="f1"\r\n\r\n' + preamble
            + b"--f1\r\nContent-Type: application/pgp-encrypted\r\n\r\n" + control
            + b"\r\n--f1\r\nContent-Type: application/octet-stream\r\n\r\n" + armored_of(gw) + after
            + b"\r\n--f1--\r\n" + epilogue)


def _f1_cross(gw, build) -> tuple[bytes, bytes]:
    """An office user's message for bruno@justice through gateway A: (the bytes that reached J, the
    file J delivered to bruno's mailbox). ``build(message_id)`` makes the message."""
    from tests.hostile.test_message_hostile import accepted, from_office
    from tests.support import wait_for
    mid = b"<f1-%d@interieur.gouv.fr>" % _time_f1.monotonic_ns()
    box = gw.j.home / "Maildir" / BRUNO / "new"
    with _f1_watch_j(gw) as got:
        reply, added = from_office(gw, build(mid))
        accepted(reply, added)
        crossed = wait_for(lambda: [d for d in list(got) if mid in d], 90, "the message at J")
    delivered = wait_for(lambda: [p.read_bytes() for p in (box.iterdir() if box.exists() else [])
                                  if mid in p.read_bytes()], 90, "delivery to bruno's mailbox")
    assert len(crossed) == 1 and len(delivered) == 1
    return crossed[0], delivered[0]


def _f1_assert_only_packets_crossed(crossed: bytes, delivered: bytes) -> None:
    from tests.differential.checker import problems
    assert _F1_MARK not in crossed and _F1_MARK not in delivered
    assert problems(crossed) == []  # the gateway's list and skeleton, then ESKs and one SEIPD


def _f1_same_packets(gw, crossed: bytes) -> bool:
    from securemail.crypto.armor import dearmor
    from tests.hostile.test_message_hostile import armored_of
    return dearmor(crossed.replace(b"\r\n", b"\n"))[1] == dearmor(armored_of(gw))[1]


def test_plaintext_in_the_pgp_mime_preamble_never_crosses(gw):
    crossed, delivered = _f1_cross(gw, lambda mid: _f1_pgp_mime(gw, mid, preamble=_F1_MARK + b" preamble\r\n"))
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert _f1_same_packets(gw, crossed)  # the sender's packets, in the gateway's own wrapper


def test_plaintext_in_the_pgp_mime_control_part_never_crosses(gw):
    crossed, delivered = _f1_cross(gw, lambda mid: _f1_pgp_mime(
        gw, mid, control=b"Version: 1\r\n" + _F1_MARK + b" control\r\n"))
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert _f1_same_packets(gw, crossed)


def test_plaintext_after_the_armor_never_crosses(gw):
    crossed, delivered = _f1_cross(gw, lambda mid: _f1_pgp_mime(gw, mid, after=_F1_MARK + b" after the END line\r\n"))
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert _f1_same_packets(gw, crossed)


def test_plaintext_in_the_pgp_mime_epilogue_never_crosses(gw):
    crossed, delivered = _f1_cross(gw, lambda mid: _f1_pgp_mime(gw, mid, epilogue=_F1_MARK + b" epilogue\r\n"))
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert _f1_same_packets(gw, crossed)


def test_inline_pgp_with_text_after_the_armor_is_encrypted_whole_by_the_gateway(gw):
    from tests.hostile.test_message_hostile import armored_of
    crossed, delivered = _f1_cross(gw, lambda mid: _f1_head(mid, b"Content-Type: text/plain\r\n\r\n")
                                   + armored_of(gw) + b"\r\n" + _F1_MARK + b" after END PGP MESSAGE\r\n")
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert not _f1_same_packets(gw, crossed)  # sealed: the gateway's own encryption of the whole message


def test_content_carrying_headers_in_clear_are_sealed_with_the_message(gw):
    extra = b"".join(b"%s: %s %s\r\n" % (name, _F1_MARK, name)
                     for name in (b"Subject", b"Keywords", b"Comments", b"X-Note"))

    def build(mid):
        return _f1_pgp_mime(gw, mid).replace(b"Subject: ...\r\n", b"", 1).replace(b"MIME-Version", extra + b"MIME-Version", 1)
    crossed, delivered = _f1_cross(gw, build)
    _f1_assert_only_packets_crossed(crossed, delivered)
    assert b"\r\nSubject: ...\r\n" in crossed and not _f1_same_packets(gw, crossed)


# --- finding 7: the publish endpoint does not tell which accounts exist -------------------------------

from tests.adversarial.lockout import PASSWORD as _F7_PASSWORD  # noqa: E402
from tests.adversarial.lockout import guarded_gateway as _f7_guarded_gateway  # noqa: E402


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with _f7_guarded_gateway(tmp_path_factory.mktemp("guarded")) as g:
        yield g


def test_publish_answers_a_wrong_user_as_a_wrong_password(guarded):
    """Same status, body and challenge, and the same scrypt: the time does not tell either.

    The two kinds of guess alternate, so that whatever else the machine does falls on both, and
    each kind is judged by its fastest answer: the cost of the check itself, without the waits."""
    wrong_password, wrong_user = [], []
    for n in range(5):   # under the budget of 10 failures per source and per account
        wrong_password.append(guarded.publish(f"alice@{OWN}", f"guess-{n}", "127.0.90.1"))
        wrong_user.append(guarded.publish(f"nobody{n}@{OWN}", _F7_PASSWORD, "127.0.91.1"))
    answers = {(status, body, challenge) for status, body, challenge, _ in wrong_password + wrong_user}
    assert answers == {(401, '{"error": "authentication required"}', 'Basic realm="securemail"')}, answers
    known = min(t for *_, t in wrong_password)
    unknown = min(t for *_, t in wrong_user)
    assert unknown > 0.5 * known and known > 0.5 * unknown, (known, unknown)
    assert unknown > 0.01  # a scrypt ran for the unknown user too


def test_publish_over_the_failure_budget_is_refused_even_with_the_right_password(guarded):
    source = "127.0.92.1"
    for n in range(10):
        assert guarded.publish(f"x{n}@{OWN}", "wrong", source)[0] == 401
    status, body, _, _ = guarded.publish(f"alice@{OWN}", _F7_PASSWORD, source)
    assert (status, body) == (429, '{"error": "too many authentication failures, try again later"}')
    assert guarded.publish(f"alice@{OWN}", _F7_PASSWORD, "127.0.93.1")[0] == 400  # authenticated: {} is no request


# --- issue 10, findings 2 and 5: status headers and the signer, as an authenticated user ---------
def _f25_submit(gw, data: bytes, rcpt: str = BRUNO) -> None:
    """Alice, authenticated on A's submission port, sends ``data``."""
    import smtplib

    from tests.hostile import client_tls
    from tests.hostile.conftest import PASSWORD
    with smtplib.SMTP("127.0.0.1", gw.a.submission, timeout=60) as s:
        s.starttls(context=client_tls())
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [rcpt], data) == {}


def test_user_signing_as_the_minister_end_to_end_is_signer_mismatch_for_the_reader(gw):
    """Alice signs with her own valid key a message whose protected From is the minister of
    justice, with forged status headers inside and out, encrypted end to end to bruno. Bruno's
    mailbox carries J's two status headers only; reading it says signer-mismatch, names alice's
    key and address, the From mismatch, and the sender's status headers as the sender's."""
    from tests.adversarial import relay_office as R
    text, msgid = R.marker(), f"{R.marker()}@{OWN}"
    alice = R.secret_key(R.person_home(gw.tmp, ALICE))
    bruno = R.person_home(gw.tmp, BRUNO)
    data = R.sealed(R.inner(R.MINISTRE, BRUNO, text, R.FORGED), [(R.cert(bruno, BRUNO), BRUNO)], alice,
                    frm=f"Alice Martin <{ALICE}>", msgid=msgid, outer=R.FORGED)
    _f25_submit(gw, data)
    path = R.maildir_file(gw.j, BRUNO, msgid)
    msg = R.parsed(path.read_bytes())
    assert R.values(msg, "Securemail-Status") == ["encrypted=yes; signature=unchecked"]
    assert R.values(msg, "Authentication-Results") == [f"gw.{JUSTICE}; dkim=pass header.d={OWN}"]
    assert b"FORGED" not in path.read_bytes() and b"forged=yes" not in path.read_bytes()
    out = R.read_json(bruno, path)
    assert out["from"] == R.MINISTRE and text in out["body"]
    assert out["signature"] == "signer-mismatch" and out["signer"] == alice.fingerprint
    assert ALICE in out["warning"] and alice.fingerprint in out["warning"]
    assert f"ministre@{JUSTICE}" in out["warning"] and "differs from the outer From" in out["warning"]
    assert "status headers written by its sender" in out["warning"]


def test_user_forged_status_headers_in_plain_mail_never_reach_the_reader(gw):
    """Plain mail from alice with forged status headers: A encrypts it without them, J adds its
    own; bruno's mailbox and the message he decrypts carry no status header of alice's."""
    from tests.adversarial import relay_office as R
    text, msgid = R.marker(), f"{R.marker()}@{OWN}"
    data = (f"From: Alice Martin <{ALICE}>\r\nTo: <{BRUNO}>\r\nSubject: Note {text}\r\n"
            f"Message-ID: <{msgid}>\r\n{R.FORGED}\r\nTexte {text}.\r\n").encode()
    _f25_submit(gw, data)
    path = R.maildir_file(gw.j, BRUNO, msgid)
    msg = R.parsed(path.read_bytes())
    status = R.values(msg, "Securemail-Status")
    assert len(status) == 1 and "FORGED" not in status[0] and status[0].startswith("encrypted=yes; ")
    assert R.values(msg, "Authentication-Results") == [f"gw.{JUSTICE}; dkim=pass header.d={OWN}"]
    out = R.read_json(R.person_home(gw.tmp, BRUNO), path)
    assert out["decrypted"] and text in out["body"] and "status headers" not in out["warning"]
